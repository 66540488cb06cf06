"""The detector's validation loss and its gradient, as the hypergradient and the search
methods measure them."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from ultralytics.nn.tasks import DetectionModel

from detector.losses import BatchNormMode, detection_loss, trainable_parameters
from detector.targets import ImageBatch

HYPERGRADIENT_BN = BatchNormMode.BATCH
"""BatchNorm mode of every gradient in the hypergradient (validation gradient, Hessian, mixed
derivative, per-image alignment) and of the validation loss the baselines are scored with."""


def validation_loss_and_gradient(
    model: DetectionModel, batch: ImageBatch, chunk: int, with_gradient: bool
) -> tuple[float, list[Tensor] | None]:
    """Mean validation loss over ``batch`` (in near-equal chunks of at most ``chunk`` images,
    BatchNorm on each chunk's statistics) and, if asked, its gradient w.r.t. the detector's
    trainable parameters."""
    count = batch.images.shape[0]
    parameters = trainable_parameters(model)
    total = 0.0
    gradient = [torch.zeros_like(p) for p in parameters] if with_gradient else None
    for rows in torch.arange(count).tensor_split(math.ceil(count / chunk)):
        part = batch.index(rows.to(batch.images.device))
        weight = len(rows) / count
        if with_gradient:
            loss = detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN)
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            for total_grad, grad in zip(gradient, grads):
                if grad is not None:
                    total_grad.add_(grad, alpha=weight)
        else:
            with torch.no_grad():
                loss = detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN)
        total += weight * loss.item()
    return total, gradient
