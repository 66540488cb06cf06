"""ray_depth_order: by ray, then by depth, exactly as a float sort would order them."""

from __future__ import annotations

import pytest
import torch

from renderer.raymarch import PackedSamples, ray_depth_order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_order_matches_a_lexicographic_float_sort(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    n = 5000
    t = torch.randn(n, generator=generator, dtype=dtype) * 3
    t[::7] = t[1::7][: t[::7].numel()]  # ties, kept in input order
    t[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=dtype)
    rays = torch.randint(0, 50, (n,), generator=generator)
    rays[:4] = 3
    order = ray_depth_order(PackedSamples(rays, t, torch.zeros(n, dtype=dtype), torch.zeros(n, 3, dtype=dtype)))
    expected = sorted(range(n), key=lambda i: (int(rays[i]), float(t[i]), i))
    assert order.tolist() == expected
