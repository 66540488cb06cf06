"""Rectangular renders (renderer.camera): the centre band of the square render of the longer
side, with truncated objects labelled by their visible part; the light-direction ramp."""

from __future__ import annotations

import pytest
import torch

from renderer.labels import boxes_from_masks
from renderer.photometric import PhotometricConfig, compositor, light_ramp
from renderer.scene_types import SceneParams
from tests.renderer.test_scene_renderer import two_box_scene

SQUARE = 32


@pytest.mark.parametrize("shape", [(20, 32), (32, 22), (19, 32)])
def test_rectangle_is_the_centre_band_of_the_square(shape: tuple[int, int]) -> None:
    renderer, params = two_box_scene()
    square = renderer.render(params, SQUARE)
    band = renderer.render(params, shape)
    height, width = shape
    top, left = (SQUARE - height) // 2, (SQUARE - width) // 2
    rows, cols = slice(top, top + height), slice(left, left + width)
    assert band.rgb.shape == (1, 3, height, width)
    for name in ("rgb", "alpha", "masks", "depth"):
        assert torch.allclose(getattr(band, name), getattr(square, name)[..., rows, cols], atol=1e-9), name
    # Both objects lie inside every band here: the same boxes, moved by the band's origin.
    shift = torch.tensor([left, top, left, top], dtype=square.boxes.dtype)
    assert band.keep.all() and square.keep.all()
    assert torch.equal(band.boxes, square.boxes - shift)


def test_an_object_cut_by_the_border_is_labelled_with_its_visible_part() -> None:
    renderer, params = two_box_scene()
    params.offset[0, 0] = torch.tensor([0.0, 0.55], dtype=params.offset.dtype)  # object 0 high up
    square = renderer.render(params, SQUARE)
    band = renderer.render(params, (16, SQUARE))  # rows 8..23 of the square
    assert float(square.boxes[0, 0, 1]) < 8 < float(square.boxes[0, 0, 3])  # the band cuts it
    assert bool(band.keep[0, 0])
    x0, y0, x1, y1 = band.boxes[0, 0].tolist()
    assert y0 == 0 and y1 == float(square.boxes[0, 0, 3]) - 8
    # The box of the part inside the band, not the whole object's box moved.
    assert torch.equal(band.boxes[0, 0], boxes_from_masks(square.masks[0, 0, 8:24]))
    assert x1 - x0 < float(square.boxes[0, 0, 2] - square.boxes[0, 0, 0])


def test_light_ramp_changes_only_object_pixels_and_passes_gradients() -> None:
    renderer, params = two_box_scene()
    out = renderer.render(params, (20, 28))
    premultiplied = (out.rgb - (1 - out.alpha) * renderer.backgrounds.compose(
        params.background_ids, params.background_crop, params.background_color, (20, 28))).detach()
    rgb = premultiplied.clone().requires_grad_(True)
    shaded = light_ramp(rgb, out.masks, torch.Generator().manual_seed(3), strength=0.3)
    changed = (shaded - rgb).abs().amax(1)[0]
    objects = (out.masks[0] > 0).any(0)
    assert float(changed[~objects].max()) == 0.0
    assert float(changed[objects].max()) > 0.02
    # A ramp: brighter on one side of each object than on the other, within +-strength.
    ratio = (shaded / rgb.clamp(min=1e-9))[0, 0][out.masks[0, 0] > 0.99]
    assert float(ratio.max() - ratio.min()) > 0.02 and float(ratio.min()) >= 0.7 - 1e-9 and float(ratio.max()) <= 1.3 + 1e-9
    shaded.sum().backward()
    assert rgb.grad is not None and float(rgb.grad[0, :, objects].min()) > 0


def test_compositor_applies_the_light_ramp_by_default() -> None:
    renderer, params = two_box_scene()
    params = SceneParams.cat([params, params])
    plain = PhotometricConfig(clutter_shapes=(0, 0), edge_feather=0.0, light_ramp=0.0)
    lit = PhotometricConfig(clutter_shapes=(0, 0), edge_feather=0.0)
    a = renderer.render(params, (16, 24), compositor(plain, torch.Generator().manual_seed(0)))
    b = renderer.render(params, (16, 24), compositor(lit, torch.Generator().manual_seed(0)))
    assert lit.light_ramp > 0 and torch.equal(a.boxes, b.boxes)
    background = a.alpha[:, 0] == 0
    assert torch.equal(a.rgb.permute(1, 0, 2, 3)[:, background], b.rgb.permute(1, 0, 2, 3)[:, background])
    assert float((a.rgb - b.rgb).abs().max()) > 0.01
