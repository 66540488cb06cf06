"""The inverse-Hessian direction ``u = (H + damping)^-1 g`` of neural-sim's hypergradient."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from ultralytics.nn.tasks import DetectionModel

from detector.targets import UltralyticsTargets
from optimizer.config import OptimizeConfig
from optimizer.hessian import exact_hvp, finite_difference_hvp, hessian_mask, solve_direction, training_gradient
from optimizer.validation import HYPERGRADIENT_BN


def inverse_hessian_direction(
    config: OptimizeConfig,
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    val_grad: list[Tensor],
) -> tuple[list[Tensor], list[Tensor], Tensor, bool]:
    """``u = (H + damping)^-1 val_grad`` by config.hypergradient.inverse_hessian, ``H`` the Hessian of the
    training loss on ``images`` (BatchNorm on batch statistics, HYPERGRADIENT_BN) over the
    weights config.hypergradient.hessian_layers names (optimizer.hessian; u is zero elsewhere), its products
    taken as config.hypergradient.hessian_product says. Returns u, the training gradient (its graph kept: the
    pathwise part and the per-image alignments differentiate it again), its per-image weights
    (optimizer.hessian.per_image_dots) and whether u fell back to val_grad: CG that meets
    non-positive curvature along the validation gradient itself stays at 0, which would leave
    psi without a signal."""
    mask = hessian_mask(model, config.hypergradient.hessian_layers)
    settings = config.hypergradient
    solver = dict(method=settings.inverse_hessian, steps=settings.inverse_hessian_steps, damping=settings.damping,
                  scale=settings.neumann_scale)
    if settings.hessian_product == "finite-difference":
        # Before the training gradient's graph is built: these products step the weights in place.
        hvp = finite_difference_hvp(model, images, targets, HYPERGRADIENT_BN, mask)
        u = solve_direction(hvp, val_grad, mask, **solver)
        train_grad, image_weights = training_gradient(model, images, targets, HYPERGRADIENT_BN, mask)
    else:
        train_grad, image_weights = training_gradient(model, images, targets, HYPERGRADIENT_BN, mask)
        u = solve_direction(exact_hvp(model, train_grad, mask), val_grad, mask, **solver)
    fell_back = not any(bool(x.any()) for x in u)
    if fell_back:
        u = [g.clone() if mask is None or mask[i] else torch.zeros_like(g) for i, g in enumerate(val_grad)]
    return u, train_grad, image_weights, fell_back
