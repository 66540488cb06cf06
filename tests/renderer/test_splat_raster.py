"""The CPU rasteriser's fast paths against their plain versions: the depth slices with occlusion
culling (by Gaussian, row span and pixel) and the packed-key sort."""

from __future__ import annotations

import pytest
import torch

import renderer.splat_raster as splat_raster
from renderer.splat import Gaussians, render_gaussians
from renderer.splat_raster import stable_sort
from tests.renderer.splats import random_gaussians
from tests.renderer.test_splat import reference_render


def test_many_depth_slices_match_the_per_pixel_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # An opaque cloud in front of a fainter one, cut into the most slices: pixels closed by a
    # front slice must lose exactly the pairs the per-pixel loop never reaches.
    front = random_gaussians(150, degree=1, seed=4, log_scale=-4.0)
    front.opacity_logits += 4.0
    back = random_gaussians(150, degree=1, seed=5, log_scale=-4.0)
    back.means[:, 2] -= 0.05
    g = Gaussians(*(torch.cat([getattr(front, n), getattr(back, n)]) for n in
                    ["means", "log_scales", "quats", "opacity_logits", "sh"]))
    rotation, translation = torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, -0.3], dtype=torch.float64)
    monkeypatch.setattr(splat_raster, "SLICE_PAIRS", 50)
    calls: list[int] = []
    ellipse_pairs = splat_raster._ellipse_pairs
    monkeypatch.setattr(splat_raster, "_ellipse_pairs", lambda *args: calls.append(1) or ellipse_pairs(*args))
    expected = reference_render(g, rotation, translation, 40)
    with torch.no_grad():
        got = render_gaussians(g, rotation, translation, 40.0, 40)
    assert len(calls) == splat_raster.MAX_SLICES and (expected[1] > 0.999).sum() > 100
    for name, x, y in zip(["rgb", "alpha", "depth"], got, expected):
        assert torch.allclose(x, y, atol=1e-9), (name, float((x - y).abs().max()))


@pytest.mark.parametrize("size", [0, 1, 7, 100_000])
def test_stable_sort_matches_torch_stable_sort(size: int) -> None:
    keys = torch.randint(0, 50, (size,), generator=torch.Generator().manual_seed(size), dtype=torch.int32)
    got_keys, got_order = stable_sort(keys)
    want_keys, want_order = torch.sort(keys, stable=True)
    assert got_keys.dtype == keys.dtype and torch.equal(got_keys, want_keys)
    assert torch.equal(got_order, want_order)
