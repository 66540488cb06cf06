"""The hypergradient's inverse-Hessian direction over all the detector's weights or its head alone
(``OptimizeConfig.hypergradient.hessian_layers``), with Hessian-vector products by double backward or by
finite differences of gradients (``OptimizeConfig.hypergradient.hessian_product``), and the second
derivatives the loop reads off the training gradient's graph (per-image alignments, the
pathwise mixed derivative).

With ``"head"`` the inner problem is treated as if only the Detect head (the model's last
module) were trained and the rest of the network held fixed: ``u`` solves
``(H_head + damping) u_head = g_head`` with ``H_head`` the head's block of the training
loss's Hessian and is zero elsewhere, and the training gradient keeps a graph for the head's
weights only: a double-backward product then runs through the loss and the head instead of
the whole network (a finite-difference one steps the head's weights alone, and its gradients
stop at the head). It is the exact implicit gradient of that
restricted inner problem, not of the full one: the loop's mixed derivative and per-image
alignments see the head's part of ``u`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from ultralytics.nn.tasks import DetectionModel

from detector.losses import BatchNormMode, FrozenAssignment, detection_loss, trainable_parameters
from detector.targets import UltralyticsTargets
from optimizer.config import HessianLayers
from optimizer.hypergradient import HVP, hvp_from_gradients, inverse_hvp
from optimizer.psi import OptimizerError

FINITE_DIFFERENCE_STEP = 1e-3
"""Norm of the weight step of a finite-difference Hessian-vector product: short enough that the
detector's gradient is near linear along it (tests/optimizer/test_hessian.py checks the
products against the exact ones), long enough to stay clear of float32 rounding."""


def hessian_mask(model: nn.Module, layers: HessianLayers) -> list[bool] | None:
    """Per trainable parameter of ``model``: does the inverse Hessian act on it? None: all do."""
    if layers == "all":
        return None
    if layers != "head":
        raise OptimizerError(f"OptimizeConfig.hypergradient.hessian_layers: unknown value {layers!r}; use 'all' or 'head'")
    head = getattr(model, "model", None)
    if not isinstance(head, nn.Sequential):
        raise OptimizerError("OptimizeConfig.hypergradient.hessian_layers: 'head' needs an Ultralytics model "
                             "(its last module is the head)")
    kept = {id(p) for p in head[-1].parameters()}
    return [id(p) in kept for p in trainable_parameters(model)]


def training_gradient(
    model: DetectionModel, images: Tensor, targets: UltralyticsTargets, bn_mode: BatchNormMode, mask: list[bool] | None
) -> tuple[list[Tensor], Tensor]:
    """dL_train/dtheta with its graph (``create_graph``) for the parameters ``mask`` keeps, and
    graph-less zeros for the others (which the loop's derivatives then skip); and the per-image
    weights (ones, [B]) the mean loss was taken with, so that :func:`per_image_dots` reads every
    image's alignment off the same graph instead of a second forward and backward pass."""
    parameters = trainable_parameters(model)
    weights = torch.ones(images.shape[0], device=images.device, dtype=images.dtype, requires_grad=True)
    loss = (weights * detection_loss(model, images, targets, bn_mode, reduction="none")).mean()
    grads = iter(torch.autograd.grad(loss, kept(parameters, mask), create_graph=True, allow_unused=True))
    result = []
    for index, parameter in enumerate(parameters):
        grad = next(grads) if mask is None or mask[index] else None
        result.append(torch.zeros_like(parameter) if grad is None else grad)
    return result, weights


def per_image_dots(train_grad: list[Tensor], weights: Tensor, vector: list[Tensor]) -> Tensor:
    """``[vector . dL_i/dtheta]`` for every image ``i``, from :func:`training_gradient`'s graph
    (what ``detector.losses.per_image_gradient_dot`` computes with a pass of its own): the
    mean loss is linear in the weights, so d/dw_i [vector . grad] is the i-th dot over B."""
    (dots,) = _vector_jacobian(train_grad, vector, [weights])
    return dots * weights.numel()


def per_image_dots_and_image_gradient(
    train_grad: list[Tensor], weights: Tensor, vector: list[Tensor], images: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`per_image_dots` and ``d/dx [vector . grad]`` for the ``images`` the training
    gradient was taken at (the pathwise estimator's mixed derivative), from one double backward
    instead of two."""
    dots, image_gradient = _vector_jacobian(train_grad, vector, [weights, images])
    return dots * weights.numel(), image_gradient


def _vector_jacobian(train_grad: list[Tensor], vector: list[Tensor], inputs: list[Tensor]) -> list[Tensor]:
    """d/d(inputs) [vector . train_grad] (zeros for inputs it does not reach), graph kept."""
    total = sum(((g * v).sum() for g, v in zip(train_grad, vector) if g.requires_grad), inputs[0].new_zeros(()))
    if not total.requires_grad:
        return [torch.zeros_like(x).detach() for x in inputs]
    grads = torch.autograd.grad(total, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x).detach() if g is None else g for g, x in zip(grads, inputs)]


def solve_direction(hvp: HVP, val_grad: list[Tensor], mask: list[bool] | None, **solver) -> list[Tensor]:
    """``u = (H + damping)^-1 val_grad`` over the parameters ``mask`` keeps (zero elsewhere), by
    :func:`optimizer.hypergradient.inverse_hvp` with the keyword arguments ``solver``; ``hvp``
    multiplies by the Hessian's block over those parameters (:func:`exact_hvp`,
    :func:`finite_difference_hvp`)."""
    if mask is None:
        return inverse_hvp(hvp, val_grad, **solver)
    solved = iter(inverse_hvp(hvp, kept(val_grad, mask), **solver))
    return [next(solved) if keep else torch.zeros_like(g) for g, keep in zip(val_grad, mask)]


def kept(tensors: list[Tensor], mask: list[bool] | None) -> list[Tensor]:
    """The entries of a parameter-shaped list that ``mask`` keeps (all for None)."""
    return list(tensors) if mask is None else [t for t, keep in zip(tensors, mask) if keep]


def exact_hvp(model: nn.Module, train_grad: list[Tensor], mask: list[bool] | None) -> HVP:
    """Hessian-vector products over the kept parameters by double backward through
    :func:`training_gradient`'s graph."""
    return hvp_from_gradients(kept(train_grad, mask), kept(trainable_parameters(model), mask))


def finite_difference_hvp(
    model: DetectionModel, images: Tensor, targets: UltralyticsTargets, bn_mode: BatchNormMode, mask: list[bool] | None
) -> HVP:
    """Hessian-vector products over the kept parameters by a forward difference of gradients,
    ``H v ~ (grad L(theta + eps v) - grad L(theta)) / eps`` with ``eps = FINITE_DIFFERENCE_STEP
    / |v|``: one forward and backward pass per product instead of a double backward. The target
    assignment of ``theta`` is held fixed (``detector.losses.FrozenAssignment``), so the
    difference sees the loss's curvature, not the assigner's jumps. The weights are stepped in
    place and restored exactly, so no graph that saved them may be alive while it runs."""
    parameters = kept(trainable_parameters(model), mask)
    frozen = FrozenAssignment()
    images = images.detach()
    base: list[Tensor] = []

    def gradient() -> list[Tensor]:
        loss = detection_loss(model, images, targets, bn_mode, frozen=frozen)
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, parameters)]

    def hvp(vector: list[Tensor]) -> list[Tensor]:
        if not base:
            base.extend(gradient())  # first, so the assignment recorded is theta's own
        norm = torch.sqrt(sum((v.square().sum() for v in vector), torch.zeros((), device=vector[0].device)))
        if norm == 0:
            return [torch.zeros_like(v) for v in vector]
        step = FINITE_DIFFERENCE_STEP / float(norm)
        saved = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for parameter, v in zip(parameters, vector):
                parameter.add_(v, alpha=step)
        try:
            stepped = gradient()
        finally:
            with torch.no_grad():
                for parameter, original in zip(parameters, saved):
                    parameter.copy_(original)
        return [(a - b) / step for a, b in zip(stepped, base)]

    return hvp
