"""The compiled splat compositor (renderer.splat_kernel): the torch path's images, its fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch

from renderer import splat_kernel
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from renderer.splat import Gaussians, SplatObject
from tests.renderer.fields import SolidBoxField
from tests.renderer.splats import random_gaussians, slab


def step_splat() -> Gaussians:
    """Two opaque slabs side by side, the left 3 cm in front of the centre, the right 3 cm behind."""
    left = slab((0.025, 0.04), 0.03, (0.9, 0.1, 0.1), dtype=torch.float32)
    right = slab((0.025, 0.04), -0.03, (0.1, 0.9, 0.1), dtype=torch.float32)
    left.means[:, 0] -= 0.025
    right.means[:, 0] += 0.025
    return Gaussians(*(torch.cat([getattr(left, n), getattr(right, n)]) for n in
                       ["means", "log_scales", "quats", "opacity_logits", "sh"]))


def scene(config: SceneRendererConfig) -> tuple[SceneRenderer, SceneParams]:
    """Three float32 splats (two translucent clouds and an opaque step) overlapping each other
    in three images, one with an empty slot and one with the same object twice."""
    clouds = [random_gaussians(400, degree=1, dtype=torch.float32, seed=seed, spread=0.025, log_scale=-5.5)
              for seed in (1, 2)]
    objects = [SplatObject(g) for g in clouds] + [SplatObject(step_splat())]
    images = [SceneParams.single([0, 1, 2], [10.0, 80.0, 0.0], [20.0, 5.0, 0.0], [0.5, 0.55, 0.6],
                                 offset=[(-0.4, 0.0), (0.4, 0.05), (0.0, 0.0)]),
              SceneParams.single([2, 0, 1], [30.0, 200.0, 120.0], [10.0, 40.0, 0.0], [0.45, 0.6, 0.5],
                                 offset=[(0.0, 0.1), (0.15, 0.0), (-0.3, -0.1)]),
              SceneParams.single([1, 1, 0], [0.0, 90.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.55, 5.0],
                                 offset=[(-0.1, 0.0), (0.1, 0.0), (0.0, 0.0)])]
    params = SceneParams.cat(images)
    params.present[2, 2] = False
    params.exposure[0, 1] = 0.4
    params.color_gain[1, 0] = torch.tensor([1.2, 0.9, 1.0])
    return SceneRenderer(config, objects), params


def render(config: SceneRendererConfig, size=(48, 64)):
    renderer, params = scene(config)
    with torch.no_grad():
        return renderer.render(params, size)


def test_the_compiled_compositor_renders_the_torch_paths_images() -> None:
    assert splat_kernel.load_kernel() is not None, "the test machine has a C compiler"
    fast, slow = render(SceneRendererConfig()), render(SceneRendererConfig(compiled_splats=False))
    shown = (slow.masks > 0.5).sum(dim=(2, 3))
    assert (shown > 50).sum() == 8 and shown[2, 2] == 0  # every present object shows, the empty slot not
    for name in ("rgb", "alpha", "masks", "depth"):
        a, b = getattr(fast, name), getattr(slow, name)
        # Float rounding only: a pair at its 1/255, footprint or stopping threshold may flip
        # (about 1 value in 1000 here, by under 1/255); elsewhere the same to 1e-4.
        assert (a - b).abs().max() < 5e-3, name
        assert ((a - b).abs() > 1e-4).float().mean() < 1e-2, name
        assert ((a - b).abs() > 1e-3).float().mean() < 2e-3, name
    assert torch.allclose(fast.visible, slow.visible, atol=1e-3)
    assert torch.equal(fast.boxes, slow.boxes) and torch.equal(fast.keep, slow.keep)


def test_objects_partly_hidden_behind_others_keep_the_torch_paths_visible_fractions() -> None:
    # Visible fraction = an object's share of the image over its opacity alone: the hidden
    # Gaussians of an object still count towards the latter.
    fast, slow = render(SceneRendererConfig()), render(SceneRendererConfig(compiled_splats=False))
    assert ((slow.visible > 0.1) & (slow.visible < 0.7)).sum() >= 2
    assert torch.allclose(fast.visible, slow.visible, atol=1e-3)


def test_without_a_compiler_the_renderer_keeps_the_torch_path(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NERFSIM_KERNEL_DIR", str(tmp_path / "kernels"))
    with caplog.at_level(logging.WARNING, logger="renderer.splat_kernel"):
        out = render(SceneRendererConfig())
    assert splat_kernel.load_kernel() is None
    assert "cannot compile" in caplog.text and "no-such-compiler" in caplog.text
    assert not list((tmp_path / "kernels").iterdir())  # no partial library left behind
    torch_path = render(SceneRendererConfig(compiled_splats=False))
    for name in ("rgb", "alpha", "masks", "depth", "boxes"):
        assert torch.equal(getattr(out, name), getattr(torch_path, name)), name


def test_a_built_kernel_is_reused_from_its_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NERFSIM_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(splat_kernel, "_loaded", {})
    assert splat_kernel.load_kernel() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("splat_kernel_")  # no partial file left
    monkeypatch.setattr(splat_kernel, "_loaded", {})
    monkeypatch.setattr(splat_kernel.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert splat_kernel.load_kernel() is not None


def test_with_gradients_or_a_nerf_in_the_image_the_torch_path_renders() -> None:
    renderer, params = scene(SceneRendererConfig())
    reference, _ = scene(SceneRendererConfig(compiled_splats=False))
    gains = params.color_gain.clone().requires_grad_(True)
    params.color_gain = gains
    out = renderer.render(params, (48, 64))
    assert torch.equal(out.rgb, reference.render(params, (48, 64)).rgb)
    out.rgb.sum().backward()
    assert gains.grad.abs().sum() > 0
    # A NeRF object among the splats: the whole image goes through the packed-sample merge.
    box = SolidBoxField((0.03, 0.03, 0.03), (0.2, 0.3, 0.9))
    mixed = SceneRenderer(SceneRendererConfig(), [*renderer.fields, box])
    _, params = scene(SceneRendererConfig())
    params.object_ids[0, 1] = 3
    with torch.no_grad():
        fast = mixed.render(params, (48, 64))
        slow = SceneRenderer(SceneRendererConfig(compiled_splats=False), mixed.fields).render(params, (48, 64))
    assert torch.equal(fast.rgb, slow.rgb) and torch.equal(fast.masks, slow.masks)


def test_gaussians_with_non_finite_values_are_left_out_not_read_out_of_bounds() -> None:
    g = random_gaussians(50, degree=0, dtype=torch.float32, seed=5, spread=0.02, log_scale=-5.0)
    broken = Gaussians(*(torch.cat([getattr(g, n), getattr(g, n)[:3]]) for n in
                         ["means", "log_scales", "quats", "opacity_logits", "sh"]))
    broken.means[-3] = float("nan")
    broken.log_scales[-2] = float("inf")
    broken.means[-1] = torch.tensor([1e30, -1e30, 0.0])
    params = SceneParams.single([0], [20.0], [10.0], [0.4])
    with torch.no_grad():
        out = SceneRenderer(SceneRendererConfig(), [SplatObject(broken)]).render(params, (48, 64))
        clean = SceneRenderer(SceneRendererConfig(), [SplatObject(g)]).render(params, (48, 64))
    assert out.alpha.sum() > 10 and torch.isfinite(out.rgb).all()
    assert torch.allclose(out.rgb, clean.rgb, atol=1e-6) and torch.allclose(out.masks, clean.masks, atol=1e-6)


def test_an_unwritable_kernel_folder_keeps_the_torch_path(tmp_path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NERFSIM_KERNEL_DIR", str(blocker / "kernels"))
    monkeypatch.setattr(splat_kernel, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="renderer.splat_kernel"):
        assert splat_kernel.load_kernel() is None
    assert "unavailable" in caplog.text
    out = render(SceneRendererConfig())
    assert torch.equal(out.rgb, render(SceneRendererConfig(compiled_splats=False)).rgb)
