"""Backgrounds harvested from labelled photos hold no part of any labelled box; a photo whose
boxes leave no usable region gives none, and no usable region in any photo is a clear error."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from renderer.backgrounds import BackgroundError, BackgroundSet
from renderer.harvest import free_rectangles, harvest
from renderer.scene_spec import SceneSpec, load_scene

RED = (255, 0, 0)


def red_box_photo(path: Path, width: int, height: int, boxes: list[tuple[int, int, int, int]], seed: int) -> Path:
    """A noise photo (red channel below 100) with each box filled red: any harvested pixel with
    much red comes from a box."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)
    pixels[..., 1:] = rng.integers(0, 256, (height, width, 2), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = RED
    Image.fromarray(pixels).save(path)
    return path


def random_boxes(rng: np.random.Generator, width: int, height: int) -> list[tuple[int, int, int, int]]:
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        boxes.append((x0, y0, x0 + w, y0 + h))
    return boxes


def test_no_harvested_background_holds_any_part_of_a_labelled_box(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photos = []
    for index in range(12):
        width, height = (200, 150) if index % 2 else (120, 160)
        boxes = random_boxes(rng, width, height)
        path = red_box_photo(tmp_path / f"photo{index}.png", width, height, boxes, seed=index)
        photos.append((path, torch.tensor(boxes, dtype=torch.float32), width, height))

    found = harvest([(path, boxes) for path, boxes, _, _ in photos], max_side=1000)
    assert len(found) >= 12  # most photos leave room
    for item in found:
        path, boxes, width, height = next(p for p in photos if p[0] == item.photo)
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert min(x1 - x0, y1 - y0) >= round(0.2 * min(width, height))
        for bx0, by0, bx1, by1 in boxes.tolist():
            assert x1 <= bx0 or bx1 <= x0 or y1 <= by0 or by1 <= y0, (item.box, boxes)
        # The pixels themselves: none of a box's red.
        assert tuple(item.image.shape) == (3, y1 - y0, x1 - x0)
        assert float(item.image[0].max()) < 100 / 255 + 1e-6
    # Rectangles of one photo do not overlap each other.
    for path, *_ in photos:
        rectangles = [h.box for h in found if h.photo == path]
        for i, a in enumerate(rectangles):
            for b in rectangles[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_a_rotated_phone_photo_is_harvested_upright_as_its_boxes_were_drawn(tmp_path: Path) -> None:
    """Boxes are drawn on the photo as shown (EXIF orientation applied, as the labelled set's
    reader does): the harvest must cut in that frame, not in the stored pixels' frame."""
    from detector.datasets import read_image

    box = (0, 0, 120, 90)  # the upper part of an upright 120 x 200 photo
    pixels = np.full((200, 120, 3), (60, 120, 120), dtype=np.uint8)  # flat: JPEG keeps it flat
    pixels[box[1]:box[3], box[0]:box[2]] = RED
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)  # held sideways by the camera
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    assert tuple(read_image(path).shape) == (3, 200, 120)  # the frame the boxes are in

    found = harvest([(path, torch.tensor([box], dtype=torch.float32))], max_side=1000)
    assert found and all(h.box[1] >= box[3] for h in found)
    for item in found:
        assert float(item.image[0].max()) < 100 / 255  # the box's red is 255


def test_the_largest_free_region_is_found_first() -> None:
    # One box on the left third: the rest of the 300 x 100 photo is free.
    rectangles = free_rectangles(300, 100, torch.tensor([[0.0, 0.0, 100.0, 100.0]]), min_side=20)
    x0, y0, x1, y1 = rectangles[0]
    assert (y0, y1, x1) == (0, 100, 300) and 100 < x0 <= 110  # clear of the box by a grid cell


def test_a_covered_photo_gives_none_and_no_usable_region_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    covered = red_box_photo(tmp_path / "covered.png", 100, 80, [(5, 5, 95, 75)], seed=1)
    free = red_box_photo(tmp_path / "free.png", 100, 80, [(0, 0, 30, 80)], seed=2)
    assert free_rectangles(100, 80, torch.tensor([[5.0, 5.0, 95.0, 75.0]]), min_side=16) == []
    found = harvest([(covered, torch.tensor([[5.0, 5.0, 95.0, 75.0]])), (free, torch.tensor([[0.0, 0.0, 30.0, 80.0]]))])
    assert found and {h.photo for h in found} == {free}
    with pytest.raises(BackgroundError, match="none of the 2 labelled photos has a region clear of its labelled boxes"):
        harvest([(covered, torch.tensor([[5.0, 5.0, 95.0, 75.0]]))] * 2)


def test_harvested_backgrounds_replace_the_fallback_textures_not_those_asked_for(tmp_path: Path) -> None:
    harvested = BackgroundSet([torch.zeros(3, 8, 8)], ["photo_0_0_8_8"])
    fallback = SceneSpec(name="t", objects=[], procedural_backgrounds=None)
    assert load_scene(fallback)[1].names == [f"procedural_{i}" for i in range(4)]
    assert load_scene(fallback, harvested)[1].names == ["photo_0_0_8_8"]
    asked = SceneSpec(name="t", objects=[], procedural_backgrounds=2)
    assert load_scene(asked, harvested)[1].names == ["photo_0_0_8_8", "procedural_0", "procedural_1"]


# ---------------------------------------------------------------- through run_optimization


def _scene_and_photos(tmp_path: Path, boxes: list[tuple[int, int, int, int]]) -> tuple[Path, Path]:
    """A one-object scene with the fallback textures, and a COCO set of two labelled photos."""
    from renderer.object_field import ObjectAssetMeta, ObjectField, ObjectFieldConfig
    from renderer.train_object import save_object_asset

    model = ObjectFieldConfig(plane_resolutions=(8,), plane_components=4, hidden_dim=16, occupancy_resolution=8)
    aabb = torch.tensor([[-0.05, -0.03, -0.02], [0.05, 0.03, 0.02]])
    save_object_asset(ObjectField(model, aabb), ObjectAssetMeta("box", aabb.tolist(), asdict(model)), tmp_path / "box")
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"name": "t", "objects": [{"name": "box", "path": "box"}], "procedural_backgrounds": None}))
    (tmp_path / "images").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "box"}]}
    for index in range(2):
        red_box_photo(tmp_path / "images" / f"{index}.png", 160, 120, boxes, seed=index)
        coco["images"].append({"id": index, "file_name": f"images/{index}.png", "width": 160, "height": 120})
        for x0, y0, x1, y1 in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index, "category_id": 1,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return scene, tmp_path / "annotations.json"


@pytest.fixture
def renderers(monkeypatch: pytest.MonkeyPatch) -> list:
    """The renderer each run_optimization builds (the loop itself is not run)."""
    from optimizer import loop as loop_module

    built = []
    monkeypatch.setattr(loop_module, "run_loop", lambda config, renderer, *args, **kwargs: built.append(renderer))
    return built


@pytest.mark.parametrize("harvest_backgrounds", [True, False])
def test_a_job_renders_on_backgrounds_from_its_photos_by_default(
    tmp_path: Path, renderers: list, harvest_backgrounds: bool
) -> None:
    from optimizer.config import OptimizeConfig, SceneConfig, TargetsConfig
    from optimizer.loop import run_optimization

    scene, photos = _scene_and_photos(tmp_path, [(60, 40, 100, 80)])
    config = OptimizeConfig(scene=SceneConfig(spec=str(scene), harvest_backgrounds=harvest_backgrounds),
                            targets=TargetsConfig(val=str(photos)))
    run_optimization(config, tmp_path / "out", progress_bar=False)
    names = renderers[0].backgrounds.names
    if harvest_backgrounds:
        assert names and all(name.startswith(("0_", "1_")) for name in names)
    else:
        assert names == [f"procedural_{i}" for i in range(4)]


def test_photos_without_a_free_region_fall_back_to_procedural_textures_and_say_why(
    tmp_path: Path, renderers: list, caplog: pytest.LogCaptureFixture
) -> None:
    from optimizer.config import OptimizeConfig, SceneConfig, TargetsConfig
    from optimizer.loop import run_optimization

    scene, photos = _scene_and_photos(tmp_path, [(0, 0, 160, 120)])
    with caplog.at_level(logging.WARNING):
        run_optimization(OptimizeConfig(scene=SceneConfig(spec=str(scene)),
                                        targets=TargetsConfig(val=str(photos))), tmp_path / "out", progress_bar=False)
    assert renderers[0].backgrounds.names == [f"procedural_{i}" for i in range(4)]
    assert "none of the 2 labelled photos has a region clear of its labelled boxes" in caplog.text
    assert "procedural textures instead" in caplog.text
