"""Object NeRFs from posed images: training, held-out quality, saving and loading, bad assets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from renderer.object_field import ObjectAssetMeta
from renderer.posed_images import load_posed_images
from renderer.train_object import (
    AssetError,
    ObjectTrainerConfig,
    load_object_asset,
    psnr_on_white,
    render_views,
    save_object_asset,
    train_object_field,
    visual_hull,
)
from tests.renderer.meshes import SMALL_MODEL

def test_visual_hull_contains_the_object_and_little_else(box_views: Path) -> None:
    images = load_posed_images(box_views, "train")
    hull = visual_hull(images, images.aabb, 32)
    # The box fills its bounding box, which the builder pads by a small margin.
    assert 0.6 < hull.float().mean() <= 1.0
    centre = hull[8:24, 8:24, 8:24]
    assert centre.all()


def test_training_reaches_a_good_held_out_psnr(box_views: Path, trained_box) -> None:
    field, stats = trained_box
    held_out = load_posed_images(box_views, "test")
    rgb, alpha = render_views(field, held_out, 64)
    assert psnr_on_white(rgb, alpha, held_out) > 24.0
    # Silhouettes agree with the masks.
    iou = ((alpha > 0.5) & (held_out.alpha > 0.5)).sum() / ((alpha > 0.5) | (held_out.alpha > 0.5)).sum()
    assert iou > 0.9
    # Empty-space skipping kept only part of the grid.
    assert stats["occupied_cells"] < 0.8 * 32**3
    assert stats["steps"] == 150


def test_saved_asset_renders_the_same(tmp_path: Path, box_views: Path, trained_box) -> None:
    field, _ = trained_box
    meta = ObjectAssetMeta(name="box", aabb=field.aabb.tolist(), model=SMALL_MODEL.__dict__, training={})
    save_object_asset(field, meta, tmp_path / "asset")
    loaded, loaded_meta = load_object_asset(tmp_path / "asset")
    assert loaded_meta.name == "box"
    assert torch.equal(loaded.occupancy, field.occupancy)
    held_out = load_posed_images(box_views, "test")
    before, _ = render_views(field, held_out, 64)
    after, _ = render_views(loaded, held_out, 64)
    assert (before - after).abs().max() < 0.02  # half-precision weights
    assert not (tmp_path / "asset.partial").exists()


def test_bad_assets_are_clear_errors(tmp_path: Path, trained_box) -> None:
    field, _ = trained_box
    with pytest.raises(AssetError, match=r"asset\.json: missing"):
        load_object_asset(tmp_path / "nothing")
    meta = ObjectAssetMeta(name="box", aabb=field.aabb.tolist(), model=SMALL_MODEL.__dict__, training={})
    save_object_asset(field, meta, tmp_path / "asset")
    weights = tmp_path / "asset" / "field.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(AssetError, match=r"field\.pt: corrupt or not a nerfsim field"):
        load_object_asset(tmp_path / "asset")
    (tmp_path / "asset" / "asset.json").write_text("{not json")
    with pytest.raises(AssetError, match=r"asset\.json: not a valid asset description"):
        load_object_asset(tmp_path / "asset")


def test_posed_set_with_empty_masks_is_refused(tmp_path: Path, box_views: Path) -> None:
    images = load_posed_images(box_views, "train")
    images.alpha.zero_()
    images.aabb = None
    with pytest.raises(AssetError, match="no object is visible"):
        train_object_field(images, ObjectTrainerConfig(model=SMALL_MODEL, steps=1), progress=False)


def test_asset_json_is_readable(tmp_path: Path, trained_box) -> None:
    field, _ = trained_box
    meta = ObjectAssetMeta(name="box", aabb=field.aabb.tolist(), model=SMALL_MODEL.__dict__, training={"steps": 1})
    save_object_asset(field, meta, tmp_path / "asset")
    described = json.loads((tmp_path / "asset" / "asset.json").read_text())
    assert described["name"] == "box" and described["training"] == {"steps": 1}
