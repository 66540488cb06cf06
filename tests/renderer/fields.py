"""Small analytic radiance fields for renderer tests: soft-walled solid boxes of one colour."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SolidBoxField(nn.Module):
    """A box of half extents ``half`` (metres) and one colour, with walls smoothed over about
    ``softness`` metres so positions carry gradients."""

    def __init__(self, half: tuple[float, float, float], color: tuple[float, float, float],
                 density: float = 2000.0, softness: float = 0.004) -> None:
        super().__init__()
        half_t = torch.tensor(half, dtype=torch.float32)
        self.register_buffer("aabb", torch.stack([-half_t * 1.2, half_t * 1.2]))
        self.register_buffer("half_extent", half_t)
        self.color = nn.Parameter(torch.tensor(color, dtype=torch.float32))
        self.peak = density
        self.softness = softness

    def occupied(self, positions: Tensor) -> Tensor:
        return torch.ones(positions.shape[0], dtype=torch.bool, device=positions.device)

    def forward(self, positions: Tensor, directions: Tensor | None = None, appearance: Tensor | None = None) -> tuple[Tensor, Tensor]:
        inside = torch.sigmoid((self.half_extent - positions.abs()) / self.softness).prod(dim=-1)
        return self.peak * inside, self.color.expand(positions.shape[0], 3)
