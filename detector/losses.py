"""The detector's training loss and its derivatives, as plain functions of (model, images, targets).

The loss is Ultralytics' own detection criterion (``v8DetectionLoss``, or ``E2ELoss`` for
end-to-end checkpoints): CIoU box loss, BCE class loss and DFL loss, weighted by the gains
in ``model.args`` (box 7.5, cls 0.5, dfl 1.5). It is evaluated image by image on one forward
pass of the whole batch, so that every image has its own loss ``L_i`` (exactly what the
trainer computes for a batch of that one image) and the batch loss is their mean.

What is not differentiated: Ultralytics' task-aligned assigner, which decides which anchors
predict which box and with what soft target score, runs under ``torch.no_grad`` on detached
predictions. Every derivative here therefore treats the assignment as fixed, although the
assignment (and the soft target scores) move when the images or weights move. A
:class:`FrozenAssignment` holds it fixed across evaluations, which makes finite differences
of the loss agree with these derivatives. The box targets are constants too, and so is the
aspect-ratio weight ``alpha`` of the CIoU loss, which Ultralytics computes under no_grad
(a small difference). Even with the assignment fixed the loss is only piecewise smooth: CIoU
takes min / max of predicted and target box edges, and SPPF max-pools.

BatchNorm: every function takes an explicit :class:`BatchNormMode`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss

from detector.errors import DetectorError
from detector.targets import UltralyticsTargets, select_targets


class BatchNormMode(enum.Enum):
    """Which statistics the BatchNorm layers normalise with."""

    BATCH = "batch"
    """Statistics of the current batch; the running statistics are left untouched."""
    RUNNING = "running"
    """The running statistics (as at inference); the layers are affine maps."""
    UPDATE = "update"
    """Statistics of the current batch, and the running statistics are updated (plain training)."""


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters derivatives are taken with respect to (those that require grad), in order."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def batch_norm_mode(model: nn.Module, mode: BatchNormMode) -> Iterator[None]:
    """Put ``model`` in train mode with its BatchNorm layers in ``mode``; restore all on exit.

    Train mode is needed besides BatchNorm: the Detect head returns the raw training outputs
    the loss consumes only when training.
    """
    modules = list(model.modules())
    was_training = [m.training for m in modules]
    batch_norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_tracking = [m.track_running_stats for m in batch_norms]
    model.train()
    for layer in batch_norms:
        if mode is BatchNormMode.RUNNING:
            layer.eval()
        elif mode is BatchNormMode.BATCH:
            # Training without tracking: F.batch_norm gets no running buffers to read or update.
            layer.track_running_stats = False
    try:
        yield
    finally:
        for m, training in zip(modules, was_training):
            m.training = training
        for layer, tracking in zip(batch_norms, was_tracking):
            layer.track_running_stats = tracking


class FrozenAssignment:
    """Holds the target assignment fixed across loss evaluations on the same images.

    The first evaluation of image ``i`` (its position in the batch) records the assigner's
    output; later evaluations of image ``i`` reuse it instead of re-assigning. Use one
    instance per batch, e.g. for finite differences of the loss.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[int, int], tuple] = {}

    def __len__(self) -> int:
        """How many assignments are recorded (one per image and criterion branch)."""
        return len(self._records)

    @contextmanager
    def applied(self, branches: list[v8DetectionLoss], image_index: int) -> Iterator[None]:
        """Within the block, ``branches`` replay (or record) the assignment of ``image_index``."""
        assigners = [branch.assigner for branch in branches]
        for branch_index, branch in enumerate(branches):
            branch.assigner = _ReplayingAssigner(branch.assigner, self._records, (branch_index, image_index))
        try:
            yield
        finally:
            for branch, assigner in zip(branches, assigners):
                branch.assigner = assigner


class _ReplayingAssigner:
    def __init__(self, assigner: nn.Module, records: dict[tuple[int, int], tuple], key: tuple[int, int]):
        self.assigner, self.records, self.key = assigner, records, key

    def __call__(self, *args, **kwargs) -> tuple:
        if self.key not in self.records:
            self.records[self.key] = self.assigner(*args, **kwargs)
        return self.records[self.key]


def detection_loss(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    bn_mode: BatchNormMode,
    reduction: Literal["mean", "sum", "none"] = "mean",
    frozen: FrozenAssignment | None = None,
) -> Tensor:
    """The training loss: the mean (or sum) over images of ``L_i``, or the [B] vector of them.

    ``L_i`` = box + cls + dfl terms of image ``i`` with the trainer's gains, normalised by
    that image's own total target score, so ``L_i`` is what Ultralytics' trainer computes
    for a batch holding image ``i`` alone. With ``BatchNormMode.BATCH`` or ``UPDATE`` the
    images still share BatchNorm statistics, so ``L_i`` depends on the other images too.
    """
    if reduction not in ("mean", "sum", "none"):
        raise DetectorError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")
    with batch_norm_mode(model, bn_mode):
        predictions = model(images)
    criterion = _criterion(model)
    branches = _detection_branches(criterion)
    per_image = []
    for i in range(images.shape[0]):
        image_targets = select_targets(targets, torch.tensor([i]))
        with frozen.applied(branches, i) if frozen is not None else nullcontext():
            loss_terms, _ = criterion(_image_predictions(predictions, i), image_targets)
        per_image.append(loss_terms.sum())
    losses = torch.stack(per_image)
    if reduction == "none":
        return losses
    return losses.mean() if reduction == "mean" else losses.sum()


def parameter_gradient(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    bn_mode: BatchNormMode,
    create_graph: bool = False,
    frozen: FrozenAssignment | None = None,
) -> list[Tensor]:
    """d(mean loss)/d(theta), one tensor per :func:`trainable_parameters` entry."""
    loss = detection_loss(model, images, targets, bn_mode, frozen=frozen)
    parameters = trainable_parameters(model)
    gradient = torch.autograd.grad(loss, parameters, create_graph=create_graph, allow_unused=True)
    return _zeros_for_unused(gradient, parameters)


def hessian_vector_product(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    vector: list[Tensor],
    bn_mode: BatchNormMode,
    frozen: FrozenAssignment | None = None,
) -> list[Tensor]:
    """(d^2 mean loss / d theta^2) @ vector, by double backward."""
    parameters = trainable_parameters(model)
    gradient = parameter_gradient(model, images, targets, bn_mode, create_graph=True, frozen=frozen)
    product = _dot(gradient, vector)
    return _zeros_for_unused(torch.autograd.grad(product, parameters, allow_unused=True), parameters)


def image_gradient_of_dot(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    vector: list[Tensor],
    bn_mode: BatchNormMode,
    frozen: FrozenAssignment | None = None,
) -> Float[Tensor, "B 3 S S"]:
    """d/d(images) [vector . d(mean loss)/d(theta)]: the mixed second derivative of Neural-Sim's
    hypergradient. ``images`` are detached first; chain the result through the renderer."""
    images = images.detach().requires_grad_(True)
    gradient = parameter_gradient(model, images, targets, bn_mode, create_graph=True, frozen=frozen)
    (image_gradient,) = torch.autograd.grad(_dot(gradient, vector), images)
    return image_gradient


def per_image_gradient_dot(
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    vector: list[Tensor],
    bn_mode: BatchNormMode,
    frozen: FrozenAssignment | None = None,
) -> Float[Tensor, "B"]:
    """[vector . dL_i/d(theta)] for every image i, from one double backward.

    With per-image weights u (all ones), vector . d(sum_i u_i L_i)/d(theta) is linear in u
    and its derivative with respect to u_i is the i-th dot product.
    """
    parameters = trainable_parameters(model)
    weights = torch.ones(images.shape[0], device=images.device, dtype=images.dtype, requires_grad=True)
    losses = detection_loss(model, images, targets, bn_mode, reduction="none", frozen=frozen)
    gradient = _zeros_for_unused(
        torch.autograd.grad((weights * losses).sum(), parameters, create_graph=True, allow_unused=True), parameters
    )
    (dots,) = torch.autograd.grad(_dot(gradient, vector), weights)
    return dots


def _criterion(model: DetectionModel):
    """The model's Ultralytics criterion, (re)built if missing or on another device."""
    device = next(model.parameters()).device
    criterion = getattr(model, "criterion", None)
    if criterion is None or _detection_branches(criterion)[0].device != device:
        if not hasattr(model.args, "box"):
            raise DetectorError("model.args lacks the loss gains: build the model with detector.model.build_detector")
        model.criterion = criterion = model.init_criterion()
    return criterion


def _detection_branches(criterion) -> list[v8DetectionLoss]:
    """The v8DetectionLoss objects inside the criterion (two for end-to-end heads)."""
    if isinstance(criterion, v8DetectionLoss):
        return [criterion]
    return [criterion.one2many, criterion.one2one]


def _image_predictions(predictions, index: int):
    """Image ``index`` of the head's training outputs (nested dicts / lists of tensors)."""
    if isinstance(predictions, dict):
        return {key: _image_predictions(value, index) for key, value in predictions.items()}
    if isinstance(predictions, (list, tuple)):
        return type(predictions)(_image_predictions(value, index) for value in predictions)
    return predictions[index : index + 1]


def _dot(tensors: list[Tensor], vector: list[Tensor]) -> Tensor:
    if len(tensors) != len(vector):
        raise DetectorError(f"vector has {len(vector)} tensors, the model has {len(tensors)} trainable parameters")
    return sum((t * v).sum() for t, v in zip(tensors, vector))


def _zeros_for_unused(gradients: tuple[Tensor | None, ...], parameters: list[nn.Parameter]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gradients, parameters)]
