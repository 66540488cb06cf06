"""The scene renderer: gradients, labels, occlusion, visibility."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from renderer.backgrounds import BackgroundSet
from renderer.camera import focal_length
from renderer.labels import boxes_from_masks
from renderer.object_field import ObjectField, ObjectFieldConfig
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from tests.renderer.fields import SolidBoxField

SIZE = 24


def two_box_scene(dtype=torch.float64) -> tuple[SceneRenderer, SceneParams]:
    fields = [
        SolidBoxField((0.05, 0.07, 0.03), (0.9, 0.2, 0.1)).to(dtype),
        SolidBoxField((0.04, 0.04, 0.04), (0.1, 0.3, 0.9)).to(dtype),
    ]
    background = torch.linspace(0, 1, 3 * 20 * 30).reshape(3, 20, 30).to(dtype)
    renderer = SceneRenderer(
        SceneRendererConfig(samples_per_ray=48, fov_deg=40.0), fields, BackgroundSet([background], ["ramp"])
    )
    params = SceneParams.single([0, 1], [35.0, -20.0], [15.0, 5.0], [0.55, 0.45], roll_deg=[10.0, -5.0],
                                offset=[(-0.1, 0.05), (0.25, -0.1)])
    params = replace(
        params,
        **{name: getattr(params, name).to(dtype) for name in
           ["azimuth", "elevation", "roll", "distance", "offset", "exposure", "color_gain", "background_crop",
            "background_color"]},
    )
    params.exposure += 0.2
    params.color_gain *= torch.tensor([1.1, 0.9, 1.0], dtype=dtype)
    params.background_ids[:] = 0
    params.background_crop[:] = torch.tensor([0.4, 0.6, 0.7], dtype=dtype)
    return renderer, params


CONTINUOUS = ["azimuth", "elevation", "roll", "distance", "offset", "exposure", "color_gain", "background_crop"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_gradient_matches_finite_differences(name: str) -> None:
    renderer, params = two_box_scene()
    weights = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(value: torch.Tensor) -> torch.Tensor:
        out = renderer.render(replace(params, **{name: value}), SIZE)
        return (out.rgb * weights).sum() + out.depth.sum() + out.masks.sum()

    value = getattr(params, name).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(value), value)
    eps = 1e-5
    for index in range(min(value.numel(), 4)):
        bump = torch.zeros_like(value).flatten()
        bump[index] = eps
        bump = bump.reshape(value.shape)
        numeric = (loss(value.detach() + bump) - loss(value.detach() - bump)) / (2 * eps)
        analytic = grad.flatten()[index]
        assert analytic == pytest.approx(float(numeric), rel=2e-3, abs=1e-4), (name, index)
    assert grad.abs().sum() > 0


def test_object_field_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    field = ObjectField(ObjectFieldConfig(plane_resolutions=(8, 16), plane_components=4, hidden_dim=16,
                                          density_bias=3.0),
                        torch.tensor([[-0.05, -0.05, -0.05], [0.05, 0.05, 0.05]])).double()
    renderer = SceneRenderer(SceneRendererConfig(samples_per_ray=32), [field])
    params = SceneParams.single([0], [20.0], [10.0], [0.4])
    params = replace(params, azimuth=params.azimuth.double(), elevation=params.elevation.double(),
                     roll=params.roll.double(), distance=params.distance.double(), offset=params.offset.double(),
                     exposure=params.exposure.double(), color_gain=params.color_gain.double(),
                     background_color=params.background_color.double())
    for name in ["azimuth", "distance"]:
        value = getattr(params, name).clone().requires_grad_(True)

        def loss(v: torch.Tensor) -> torch.Tensor:
            return renderer.render(replace(params, **{name: v}), 16).rgb.sum()

        (grad,) = torch.autograd.grad(loss(value), value)
        eps = 1e-6
        numeric = (loss(value.detach() + eps) - loss(value.detach() - eps)) / (2 * eps)
        assert float(grad) == pytest.approx(float(numeric), rel=1e-3), name


def test_boxes_are_the_bounds_of_the_masks() -> None:
    renderer, params = two_box_scene()
    out = renderer.render(params, 48)
    for slot in range(2):
        inside = out.masks[0, slot] > 0.5
        ys, xs = inside.nonzero(as_tuple=True)
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.equal(out.boxes[0, slot], expected)
    assert torch.equal(boxes_from_masks(torch.zeros(2, 5, 5)), torch.zeros(2, 4))


def test_box_and_depth_follow_the_projection() -> None:
    field = SolidBoxField((0.03, 0.03, 0.03), (1.0, 1.0, 1.0), softness=0.0005)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40.0, samples_per_ray=256), [field])
    size = 64
    shifted = renderer.render(SceneParams.single([0], [0.0], [0.0], [0.5], offset=[(0.5, 0.0)]), size)
    x0, y0, x1, y1 = shifted.boxes[0, 0].tolist()
    assert (x0 + x1) / 2 == pytest.approx(size * 0.75, abs=1.0)
    assert (y0 + y1) / 2 == pytest.approx(size / 2, abs=1.0)
    centred = renderer.render(SceneParams.single([0], [0.0], [0.0], [0.5]), size)
    x0, y0, x1, y1 = centred.boxes[0, 0].tolist()
    # Seen head-on only the front face shows: z = +0.03, so 0.47 m away, 0.06 m wide.
    width = 0.06 * focal_length(size, 40.0) / 0.47
    assert x1 - x0 == pytest.approx(width, abs=1.5)
    assert y1 - y0 == pytest.approx(width, abs=1.5)
    assert centred.depth[0, 0, size // 2, size // 2] == pytest.approx(0.47 / math.cos(math.radians(0.3)), abs=0.003)


def test_nearer_object_occludes_the_farther_one() -> None:
    red = SolidBoxField((0.05, 0.05, 0.05), (1.0, 0.0, 0.0))
    blue = SolidBoxField((0.05, 0.05, 0.05), (0.0, 0.0, 1.0))
    renderer = SceneRenderer(SceneRendererConfig(), [red, blue])
    centre = (slice(None), 16, 16)
    for near, far, near_colour in [(0.4, 0.8, 0), (0.8, 0.4, 2)]:
        out = renderer.render(SceneParams.single([0, 1], [0.0, 0.0], [0.0, 0.0], [near, far]), 32)
        pixel = out.rgb[0][centre]
        assert pixel[near_colour] > 0.95 and pixel.sum() < 1.05
        nearer_slot = 0 if near < far else 1
        assert out.masks[0, nearer_slot, 16, 16] > 0.95
        assert out.masks[0, 1 - nearer_slot, 16, 16] < 0.05


def test_mostly_hidden_object_is_dropped_from_labels() -> None:
    small = SolidBoxField((0.02, 0.02, 0.02), (1.0, 0.0, 0.0))
    big = SolidBoxField((0.06, 0.06, 0.01), (0.0, 1.0, 0.0))
    renderer = SceneRenderer(SceneRendererConfig(min_visible=0.3), [small, big])
    hidden = renderer.render(SceneParams.single([0, 1], [0.0, 0.0], [0.0, 0.0], [0.8, 0.5]), 32)
    assert hidden.visible[0, 0] < 0.3 and not hidden.keep[0, 0]
    assert hidden.keep[0, 1]
    beside = renderer.render(
        SceneParams.single([0, 1], [0.0, 0.0], [0.0, 0.0], [0.8, 0.5], offset=[(-0.6, 0.0), (0.5, 0.0)]), 32
    )
    assert beside.visible[0, 0] == pytest.approx(1.0) and beside.keep[0].all()


def test_chunking_and_checkpointing_do_not_change_results() -> None:
    renderer, params = two_box_scene(torch.float32)
    batch = SceneParams.cat([params] * 3)
    whole = renderer.render(batch, 16)
    renderer.config = replace(renderer.config, chunk_images=1, gradient_checkpointing=True)
    distance = batch.distance.clone().requires_grad_(True)
    chunked = renderer.render(replace(batch, distance=distance), 16)
    assert torch.allclose(whole.rgb, chunked.rgb, atol=1e-6)
    chunked.rgb.sum().backward()
    assert distance.grad.abs().sum() > 0


def test_bad_object_id_is_a_clear_error() -> None:
    renderer, params = two_box_scene()
    params.object_ids[0, 1] = 5
    with pytest.raises(ValueError, match="object ids must lie in"):
        renderer.render(params, 8)
