"""Reading posed image sets (transforms.json) and the errors for bad ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from renderer.posed_images import PosedImageError, load_posed_images


def pose(x: float) -> list[list[float]]:
    matrix = np.eye(4)
    matrix[:3, 3] = (x, 0.0, 1.0)
    return matrix.tolist()


def write_set(folder: Path, meta: dict | None = None, size: tuple[int, int] = (8, 6), count: int = 3) -> Path:
    """``count`` RGBA frames of ``size`` (w, h): frame i has colour i / 10 and alpha 0.2 + i / 10."""
    (folder / "images").mkdir(parents=True)
    frames = []
    for i in range(count):
        rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
        rgba[..., :3] = round(255 * i / 10)
        rgba[..., 3] = round(255 * (0.2 + i / 10))
        Image.fromarray(rgba, mode="RGBA").save(folder / "images" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": pose(i)})
    meta = {"fl_x": 10.0, "fl_y": 11.0, "w": size[0], "h": size[1], "frames": frames, **(meta or {})}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def test_reads_rgba_frames_cameras_and_splits(tmp_path: Path) -> None:
    folder = write_set(
        tmp_path,
        {"train_filenames": ["images/0.png", "images/2.png"], "test_filenames": ["images/1.png"],
         "nerfsim": {"aabb": [[-1, -2, -3], [1, 2, 3]], "units": "m"}},
    )
    train = load_posed_images(folder, "train")
    assert train.rgb.shape == (2, 6, 8, 3) and train.alpha.shape == (2, 6, 8, 1)
    torch.testing.assert_close(train.rgb[1], torch.full((6, 8, 3), round(255 * 0.2) / 255))
    torch.testing.assert_close(train.alpha[1], torch.full((6, 8, 1), round(255 * 0.4) / 255))
    torch.testing.assert_close(train.c2w[:, 0, 3], torch.tensor([0.0, 2.0]))
    assert (train.fx, train.fy, train.cx, train.cy, train.width, train.height) == (10.0, 11.0, 4.0, 3.0, 8, 6)
    torch.testing.assert_close(train.aabb, torch.tensor([[-1.0, -2, -3], [1, 2, 3]]))
    test = load_posed_images(folder / "transforms.json", "test")
    assert [p.name for p in test.image_paths] == ["1.png"]
    assert len(load_posed_images(folder, "all").rgb) == 3


def test_rgb_with_masks_and_camera_angle(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(tmp_path / "images" / "a.jpg", quality=100)
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "images" / "a_mask.png")
    meta = {
        "camera_angle_x": 1.0,
        "frames": [{"file_path": "images/a.jpg", "mask_path": "images/a_mask.png", "transform_matrix": pose(0)}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    images = load_posed_images(tmp_path)
    torch.testing.assert_close(images.alpha[0, ..., 0], torch.from_numpy(mask / 255.0).float())
    assert images.fx == images.fy == pytest.approx(3.0 / math.tan(0.5))
    assert images.aabb is None and (images.width, images.height) == (6, 4)


def test_missing_image_names_it(tmp_path: Path) -> None:
    folder = write_set(tmp_path)
    (folder / "images" / "1.png").unlink()
    with pytest.raises(PosedImageError, match=r"images/1.png: image named by frame 1 of .*transforms.json not found"):
        load_posed_images(folder)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: (f / "transforms.json").unlink(), r"transforms.json: not found"),
        (lambda f: (f / "transforms.json").write_text("{frames: ["), r"transforms.json: invalid JSON"),
        (
            lambda f: (f / "transforms.json").write_text(json.dumps({"fl_x": 1.0, "frames": []})),
            r"transforms.json: no frames",
        ),
        (lambda f: (f / "images" / "2.png").write_bytes(b"not a png"), r"images/2.png: not a readable image"),
        (
            lambda f: Image.fromarray(np.zeros((5, 5, 4), dtype=np.uint8)).save(f / "images" / "0.png"),
            r"images/0.png: image is 5x5, expected 8x6",
        ),
        (
            lambda f: (f / "transforms.json").write_text(
                json.dumps({**json.loads((f / "transforms.json").read_text()), "train_filenames": ["images/9.png"]})
            ),
            r"train_filenames names files that are not frames: .*images/9.png",
        ),
    ],
    ids=["no-transforms", "bad-json", "no-frames", "unreadable-image", "wrong-size", "unknown-split-file"],
)
def test_bad_sets_raise_errors_naming_the_file(tmp_path: Path, break_it, message: str) -> None:
    folder = write_set(tmp_path)
    break_it(folder)
    with pytest.raises(PosedImageError, match=message):
        load_posed_images(folder)


def test_test_split_needs_a_list(tmp_path: Path) -> None:
    folder = write_set(tmp_path)
    assert len(load_posed_images(folder, "train").rgb) == 3  # no lists: every frame trains
    with pytest.raises(PosedImageError, match="no test split"):
        load_posed_images(folder, "test")
