"""The loop's check that its numbers stay finite."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TrainingDivergedError(RuntimeError):
    """A loss, gradient, image or psi value became NaN or infinite during the loop."""


def check_finite(value: float | Tensor, what: str, iteration: int, hint: str) -> None:
    """Raise :class:`TrainingDivergedError` naming ``what`` and the ``hint`` when ``value`` has
    a NaN or infinity."""
    finite = math.isfinite(value) if isinstance(value, float) else bool(torch.isfinite(value).all())
    if not finite:
        raise TrainingDivergedError(f"outer iteration {iteration}: {what} is not finite; {hint}")
