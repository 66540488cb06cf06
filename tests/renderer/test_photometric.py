"""Photographic effects: each does what it says, keeps shape and range, is reproducible from its
generator, passes gradients where documented, and never touches the labels."""

from __future__ import annotations

import math

import pytest
import torch

from optimizer.config import OptimizeConfig, SceneConfig
from optimizer.psi import OptimizerError
from renderer.photometric import (
    PhotometricConfig,
    PhotometricError,
    compositor,
    defocus_blur,
    exposure_gamma,
    feather_edges,
    jpeg,
    motion_blur,
    over,
    paste_clutter,
    photograph,
    sensor_noise,
    white_balance,
)
from renderer.scene_types import SceneParams
from tests.optimizer.scenes import faced_box_renderer


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def high_frequency(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels (what a blur removes)."""
    return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., 1:] - images[..., :-1]).abs().mean())


def test_white_balance_gives_each_image_a_uniform_per_channel_cast() -> None:
    grey = torch.full((4, 3, 8, 8), 0.5)
    cast = white_balance(grey, seeded(), strength=0.2)
    means = cast.mean(dim=(2, 3))
    assert torch.allclose(cast, means[:, :, None, None].expand_as(cast))  # one gain per channel and image
    assert (means.max(dim=1).values - means.min(dim=1).values > 0.01).all()  # channels no longer equal
    assert torch.equal(white_balance(grey, seeded(), strength=0.0), grey)


def test_exposure_scales_each_image_by_a_power_of_two_and_gamma_keeps_white() -> None:
    images = torch.rand(6, 3, 8, 8, generator=seeded(1)) * 0.4 + 0.05
    exposed = exposure_gamma(images, seeded(), stops=1.0, gamma=0.0)
    ratio = exposed / images
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), rtol=1e-5)
    assert ((per_image[:, 0] >= 0.5 - 1e-6) & (per_image[:, 0] <= 2 + 1e-6)).all()
    ramp = torch.linspace(0, 1, 11).expand(2, 3, 1, 11)
    toned = exposure_gamma(ramp, seeded(), stops=0.0, gamma=0.5)
    assert torch.allclose(toned[..., -1], torch.ones(2, 3, 1)) and (toned.diff(dim=-1) > 0).all()


def test_sensor_noise_has_shot_noise_growing_with_intensity_and_flat_read_noise() -> None:
    images = torch.cat([torch.full((1, 3, 128, 64), 0.1), torch.full((1, 3, 128, 64), 0.9)], dim=-1)
    dark, bright = slice(0, 64), slice(64, 128)

    shot = sensor_noise(images, seeded(), shot=0.002, read=0.0) - images
    assert abs(float(shot.mean())) < 2e-3  # zero mean
    # Shot noise: variance proportional to the intensity (0.9 / 0.1).
    assert float(shot[..., bright].var() / shot[..., dark].var()) == pytest.approx(9, rel=0.15)

    read = sensor_noise(images, seeded(), shot=0.0, read=0.05) - images
    assert float(read[..., bright].var() / read[..., dark].var()) == pytest.approx(1, rel=0.15)
    assert 0 < float(read.std()) <= 0.05


@pytest.mark.parametrize("blur", [motion_blur, defocus_blur])
def test_blur_removes_high_frequencies_and_keeps_flat_images(blur) -> None:
    images = torch.rand(3, 3, 32, 32, generator=seeded(2))
    blurred = blur(images, seeded(), 0.15, probability=1.0)
    assert blurred.shape == images.shape
    assert high_frequency(blurred) < 0.7 * high_frequency(images)
    assert float(blurred.mean()) == pytest.approx(float(images.mean()), abs=0.01)  # normalised kernel
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(blur(flat, seeded(), 0.2, probability=1.0), flat)
    assert torch.allclose(blur(images, seeded(), 0.15, probability=0.0), images)


def test_jpeg_changes_the_image_more_at_lower_quality_and_stays_in_range() -> None:
    images = torch.rand(2, 3, 32, 32, generator=seeded(3), requires_grad=True)
    low = jpeg(images, seeded(), quality=(10, 10))
    high = jpeg(images, seeded(), quality=(95, 95))
    assert low.shape == images.shape and not low.requires_grad
    assert 0 <= float(low.min()) and float(low.max()) <= 1
    error = {name: float((out - images.detach()).abs().mean()) for name, out in (("low", low), ("high", high))}
    assert 1e-3 < error["high"] < error["low"]


def test_photograph_is_reproducible_from_its_generator_and_keeps_shape_and_range() -> None:
    images = torch.rand(3, 3, 17, 23, generator=seeded(4))
    config = PhotometricConfig(motion_blur_probability=1.0, defocus_blur_probability=1.0)
    first = photograph(images, config, seeded(5))
    assert torch.equal(first, photograph(images, config, seeded(5)))
    assert not torch.equal(first, photograph(images, config, seeded(6)))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert 0 <= float(first.min()) and float(first.max()) <= 1
    assert float((first - images).abs().mean()) > 0.01


def test_differentiable_effects_pass_exact_gradients() -> None:
    images = (torch.rand(1, 3, 6, 6, generator=seeded(7), dtype=torch.float64) * 0.4 + 0.2).requires_grad_()
    effects = [
        lambda x: white_balance(x, seeded(), 0.05),
        lambda x: exposure_gamma(x, seeded(), 0.3, 0.2),
        lambda x: sensor_noise(x, seeded(), 0.001, 0.01),
        lambda x: motion_blur(x, seeded(), 0.5, 1.0),
        lambda x: defocus_blur(x, seeded(), 0.3, 1.0),
        lambda x: photograph(x, PhotometricConfig(motion_blur_probability=1.0), seeded(), differentiable_only=True),
        lambda x: paste_clutter(x, seeded(), (3, 3), (0.3, 0.6)),
    ]
    for effect in effects:
        assert torch.autograd.gradcheck(effect, (images,))
    alpha = (torch.rand(1, 1, 6, 6, generator=seeded(8), dtype=torch.float64) * 0.7 + 0.2).requires_grad_()
    rgb = (alpha.detach() * 0.5).requires_grad_()
    background = torch.rand(1, 3, 6, 6, generator=seeded(9), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, a, b: feather_edges(c, a, b, seeded(), 1.5), (rgb, alpha, background))


def test_feathering_softens_only_the_object_boundary() -> None:
    alpha = torch.zeros(1, 1, 20, 20)
    alpha[..., 5:15, 5:15] = 1
    rgb = alpha.expand(1, 3, 20, 20) * torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    background = torch.zeros(1, 3, 20, 20)
    background[:, 2] = 1
    hard = over(rgb, alpha, background)
    soft = feather_edges(rgb, alpha, background, seeded(), sigma=1.0)
    changed = (soft - hard).abs().sum(1)[0] > 1e-3
    assert changed[5:15, 5:15].any()  # the outermost object pixels blend with the background
    assert not changed[8:12, 8:12].any()  # the interior stays sharp
    changed[5:15, 5:15] = False
    assert not changed.any()  # the background itself is untouched


def test_clutter_stays_behind_labelled_objects_and_adds_no_labels() -> None:
    renderer = faced_box_renderer()
    params = SceneParams.single([0, 0], [30.0, 200.0], [20.0, 10.0], [0.35, 0.45], offset=[(-0.4, 0.1), (0.4, -0.2)],
                                background_color=(0.5, 0.5, 0.5))
    plain = renderer.render(params, 32)
    config = PhotometricConfig(clutter_shapes=(6, 6), clutter_size=(0.2, 0.5), edge_feather=0.0, light_ramp=0.0)
    cluttered = renderer.render(params, 32, compositor(config, seeded()))
    for name in ("boxes", "keep", "masks", "visible", "alpha"):
        assert torch.equal(getattr(plain, name), getattr(cluttered, name)), name
    assert plain.keep.all()
    changed = (cluttered.rgb - plain.rgb).abs().amax(1)
    assert float(changed.max()) > 0.05  # the clutter is there ...
    opaque = plain.alpha[:, 0] > 0.999
    assert opaque.any() and float(changed[opaque].max()) < 1e-3  # ... and never over an object
    labelled = (plain.masks > 0.5).any(1)
    # Where a labelled mask is, the clutter shows at most through the object's transparency.
    assert (changed[labelled] <= (1 - plain.alpha[:, 0][labelled]) + 1e-6).all()


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(PhotometricError, match="jpeg_probability"):
        PhotometricConfig(jpeg_probability=1.5)
    with pytest.raises(PhotometricError, match="clutter_shapes"):
        PhotometricConfig(clutter_shapes=(4, 2))
    with pytest.raises(OptimizerError, match="OptimizeConfig.scene.photometric"):
        OptimizeConfig(scene=SceneConfig(photometric={"sharpness": 1.0})).validate()
    with pytest.raises(OptimizerError, match="OptimizeConfig.scene.photometric.*shot_noise"):
        OptimizeConfig(scene=SceneConfig(photometric={"shot_noise": -1})).validate()
    OptimizeConfig(scene=SceneConfig(photometric={"jpeg_quality": [50, 60], "in_loop": True})).validate()
    OptimizeConfig(scene=SceneConfig(photometric=None)).validate()


def full_image_clutter(background: torch.Tensor, generator: torch.Generator, shapes: tuple[int, int],
                       size: tuple[float, float]) -> torch.Tensor:
    """paste_clutter as it was before it worked near each shape only: every shape over the whole image."""
    batch, _, height, width = background.shape
    longer = max(height, width)
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float64)[None, :] + 0.5
    out = background.clone()
    for row in range(batch):
        for _ in range(int(torch.randint(shapes[0], shapes[1] + 1, (1,), generator=generator))):
            cx, cy, angle, u1, u2, u3 = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
            drawn = size[0] + (size[1] - size[0]) * torch.rand(2, generator=generator, dtype=torch.float64)
            half_a, half_b = (drawn * longer / 2).tolist()
            power = [1.0, 2.0, 6.0][int(torch.randint(3, (1,), generator=generator))]
            cos, sin = math.cos(angle * math.pi), math.sin(angle * math.pi)
            dx, dy = xs - cx * width, ys - cy * height
            u, v = (dx * cos + dy * sin) / half_a, (-dx * sin + dy * cos) / half_b
            radius = (u.abs() ** power + v.abs() ** power) ** (1 / power)
            mask = ((1 - radius) * min(half_a, half_b) + 0.5).clamp(0, 1)
            colours = torch.rand(2, 3, generator=generator, dtype=torch.float64)
            kind = int(torch.randint(3, (1,), generator=generator))
            if kind == 0:
                texture = colours[0][:, None, None] * (0.6 + 0.4 * ((u + 1) / 2).clamp(0, 1))
            elif kind == 1:
                texture = torch.where((torch.floor(u * half_a / (2 + u1 * 8)) % 2 == 0), colours[0][:, None, None],
                                      colours[1][:, None, None])
            else:
                texture = background[row].flip(-1).roll((int(u2 * height), int(u3 * width)), dims=(-2, -1)).double()
            weight = mask.to(background.dtype)
            out[row] = weight * texture.expand(3, height, width).to(background.dtype) + (1 - weight) * out[row]
    return out


@pytest.mark.parametrize("shape", [(48, 64), (64, 40)])
def test_clutter_drawn_near_each_shape_only_is_the_whole_image_computation_bit_for_bit(shape) -> None:
    background = torch.rand(6, 3, *shape, generator=seeded(3))
    fast = paste_clutter(background, seeded(4), (2, 5), (0.05, 0.5))
    assert torch.equal(fast, full_image_clutter(background, seeded(4), (2, 5), (0.05, 0.5)))
    assert (fast != background).any(dim=1).float().mean() > 0.1  # the shapes are there
