"""Splat objects in SceneRenderer: pose and lighting gradients, exact occlusion with NeRF objects."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from renderer.camera import object_to_camera
from renderer.labels import boxes_from_masks
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from renderer.splat import Gaussians, SplatObject, render_gaussians
from tests.renderer.fields import SolidBoxField
from tests.renderer.splats import random_gaussians, slab

FLOATS = ["azimuth", "elevation", "roll", "distance", "offset", "exposure", "color_gain", "background_crop",
          "background_color"]


def as_double(params: SceneParams) -> SceneParams:
    return replace(params, **{name: getattr(params, name).double() for name in FLOATS})


@pytest.mark.parametrize("name", ["distance", "azimuth", "offset", "exposure", "color_gain", "background_color"])
def test_gradients_through_the_scene_match_finite_differences(name: str) -> None:
    splat = SplatObject(random_gaussians(25, degree=1, log_scale=-4.0, seed=3))
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40.0), [splat])
    params = as_double(SceneParams.single([0], [25.0], [10.0], [0.35], roll_deg=[5.0], offset=[(0.05, -0.1)],
                                          background_color=(0.2, 0.5, 0.8)))
    params.exposure += 0.3
    params.color_gain *= torch.tensor([1.1, 0.9, 1.0], dtype=torch.float64)
    size = 10
    weights = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(value: torch.Tensor) -> torch.Tensor:
        out = renderer.render(replace(params, **{name: value}), size)
        return (out.rgb * weights).sum() + out.depth.sum() + out.masks.sum()

    value = getattr(params, name).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (value,), eps=1e-6, atol=1e-6, rtol=1e-4)
    (grad,) = torch.autograd.grad(loss(value), value)
    assert grad.abs().sum() > 0


def test_gradients_reach_every_gaussian_tensor() -> None:
    splat = SplatObject(random_gaussians(25, degree=1, log_scale=-4.0, seed=3))
    renderer = SceneRenderer(SceneRendererConfig(), [splat])
    out = renderer.render(as_double(SceneParams.single([0], [25.0], [10.0], [0.35])), 10)
    (out.rgb.sum() + out.depth.sum()).backward()
    for name, parameter in splat.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def step_splat() -> Gaussians:
    """Two opaque 10 x 8 cm slabs facing the camera at azimuth 0: the left one 3 cm in front of the
    object's centre, the right one 3 cm behind it."""
    left = slab((0.025, 0.04), 0.03, (0.9, 0.1, 0.1))
    right = slab((0.025, 0.04), -0.03, (0.9, 0.1, 0.1))
    left.means[:, 0] -= 0.025
    right.means[:, 0] += 0.025
    return Gaussians(*(torch.cat([getattr(left, n), getattr(right, n)]) for n in
                       ["means", "log_scales", "quats", "opacity_logits", "sh"]))


def mixed_scene() -> tuple[SceneRenderer, SceneParams]:
    # A NeRF box 2 cm deep through the middle of the step: the splat is nearer on the left, the
    # box on the right. Both objects sit at the same pose.
    objects = [SplatObject(step_splat()), SolidBoxField((0.04, 0.03, 0.01), (0.1, 0.2, 0.9)).double()]
    renderer = SceneRenderer(SceneRendererConfig(samples_per_ray=96, min_visible=0.05), objects)
    return renderer, as_double(SceneParams.single([0, 1], [0.0, 0.0], [0.0, 0.0], [0.4, 0.4]))


def test_splat_and_nerf_occlude_each_other_exactly() -> None:
    size = 32
    renderer, params = mixed_scene()
    out = renderer.render(params, size)
    splat_alone = renderer.render(replace(params, present=torch.tensor([[True, False]])), size).masks[0, 0]
    box_alone = renderer.render(replace(params, present=torch.tensor([[False, True]])), size).masks[0, 1]
    both = (splat_alone > 0.99) & (box_alone > 0.99)
    left, right = both.clone(), both.clone()
    left[:, size // 2 - 2:] = False
    right[:, : size // 2 + 2] = False
    assert left.sum() > 20 and right.sum() > 20
    splat_mask, box_mask = out.masks[0, 0], out.masks[0, 1]
    # The nearer object owns the pixel: the splat on the left, the box on the right.
    assert (splat_mask[left] > 0.99).all() and (box_mask[left] < 0.01).all()
    assert (box_mask[right] > 0.99).all() and (splat_mask[right] < 0.01).all()
    # Masks are shares of the pixel's opacity, so they add up to alpha; depth is the owner's.
    assert torch.allclose(out.masks[0].sum(0), out.alpha[0, 0], atol=1e-9)
    depth = out.depth[0, 0]
    # Distances along the rays (a little over the z-depths off the axis): the splat's front slab
    # at z = 0.37 m on the left, the box's front face at z = 0.39 m on the right.
    assert ((depth[left] > 0.365) & (depth[left] < 0.38)).all()
    assert ((depth[right] > 0.385) & (depth[right] < 0.40)).all()
    assert torch.equal(out.boxes, boxes_from_masks(out.masks))
    assert out.rgb.shape == (1, 3, size, size) and out.keep.all()
    assert (out.rgb >= 0).all() and (out.rgb <= 1 + 1e-9).all()
    # The order of the objects in the scene does not matter, only depth.
    flipped = SceneRenderer(renderer.config, renderer.fields[::-1]).render(params, size)
    assert torch.allclose(flipped.masks.flip(1), out.masks, atol=1e-9)
    assert torch.allclose(flipped.rgb, out.rgb, atol=1e-9) and torch.allclose(flipped.depth, out.depth, atol=1e-9)


def test_scene_renderer_matches_render_gaussians_in_every_image() -> None:
    # Two images, the splat in a different slot and pose in each (the other slot empty): the
    # packed samples of every view land on their own image's rays.
    g = random_gaussians(60, degree=2, log_scale=-4.0, seed=8)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40.0), [SolidBoxField((0.01, 0.01, 0.01), (1, 1, 1)).double(),
                                                                 SplatObject(g)])
    one = as_double(SceneParams.single([1, 0], [30.0, 0.0], [10.0, 0.0], [0.4, 5.0]))
    two = as_double(SceneParams.single([0, 1], [0.0, -50.0], [0.0, 20.0], [5.0, 0.3], offset=[(0, 0), (0.2, -0.1)]))
    params = SceneParams.cat([one, two])
    params.background_color[:] = 0.0
    params.present[0, 1] = params.present[1, 0] = False  # the box slots are empty
    out = renderer.render(params, 20)
    rotation, translation = object_to_camera(params.azimuth, params.elevation, params.roll, params.distance,
                                             params.offset, 40.0)
    for image, slot in [(0, 0), (1, 1)]:
        rgb, alpha, depth = render_gaussians(g, rotation[image, slot], translation[image, slot], 40.0, 20)
        assert alpha.sum() > 5
        assert torch.allclose(out.rgb[image], rgb, atol=1e-9) and torch.allclose(out.alpha[image], alpha, atol=1e-9)
        assert torch.allclose(out.masks[image, slot], alpha[0], atol=1e-9)
        assert torch.allclose(out.depth[image], depth, atol=1e-9)
