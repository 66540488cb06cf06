"""Tiny generated splats for tests."""

from __future__ import annotations

import torch

from renderer.splat import Gaussians


def random_gaussians(n: int = 40, degree: int = 1, dtype: torch.dtype = torch.float64, seed: int = 0,
                     spread: float = 0.04, log_scale: float = -4.5) -> Gaussians:
    """``n`` Gaussians of a few millimetres scattered over a ~10 cm object, random colours."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return Gaussians(
        means=randn(n, 3) * spread,
        log_scales=log_scale + 0.3 * randn(n, 3),
        quats=randn(n, 4),
        opacity_logits=1.0 + randn(n),
        sh=0.5 * randn(n, (degree + 1) ** 2, 3),
    )


def slab(half: tuple[float, float], depth_offset: float, colour: tuple[float, float, float], spacing: float = 0.004,
         dtype: torch.dtype = torch.float64) -> Gaussians:
    """An opaque flat slab of Gaussians in the object's z = ``depth_offset`` plane (degree 0)."""
    xs = torch.arange(-half[0], half[0] + 1e-9, spacing, dtype=dtype)
    ys = torch.arange(-half[1], half[1] + 1e-9, spacing, dtype=dtype)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    n = gx.numel()
    means = torch.stack([gx.flatten(), gy.flatten(), torch.full((n,), depth_offset, dtype=dtype)], dim=-1)
    log_scales = torch.log(torch.tensor([spacing, spacing, spacing / 4], dtype=dtype)).expand(n, 3).clone()
    dc = (torch.tensor(colour, dtype=dtype) - 0.5) / 0.28209479177387814
    return Gaussians(means, log_scales, torch.tensor([1.0, 0, 0, 0], dtype=dtype).expand(n, 4).clone(),
                     torch.full((n,), 4.0, dtype=dtype), dc.expand(n, 1, 3).clone())
