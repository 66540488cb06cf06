"""scene.json: one background folder or a list of them, in order, then the procedural textures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from renderer.backgrounds import BackgroundError
from renderer.scene_spec import SceneError, load_scene, read_scene_spec


def _photos(folder: Path, *sizes: tuple[int, int]) -> Path:
    folder.mkdir(parents=True)
    for index, (width, height) in enumerate(sizes):
        Image.fromarray(np.full((height, width, 3), 40 * index, np.uint8)).save(folder / f"{index}.png")
    return folder


def _scene(folder: Path, asset: Path, **extra) -> Path:
    (folder / "scene.json").write_text(json.dumps({"name": "s", "objects": [{"name": "box", "path": str(asset)}],
                                                   **extra}))
    return folder / "scene.json"


def test_several_background_folders_are_read_in_order(tmp_path: Path, box_asset: Path) -> None:
    _photos(tmp_path / "kitchen", (20, 10), (30, 10))
    _photos(tmp_path / "office", (12, 12))
    scene = _scene(tmp_path, box_asset, backgrounds=["office", str(tmp_path / "kitchen")], procedural_backgrounds=2)

    spec = read_scene_spec(scene)
    assert spec.backgrounds == [tmp_path / "office", tmp_path / "kitchen"]
    fields, backgrounds = load_scene(spec)
    assert len(fields) == 1 and len(backgrounds) == 5
    assert [tuple(image.shape[1:]) for image in backgrounds.images[:3]] == [(12, 12), (10, 20), (10, 30)]
    assert backgrounds.names[3:] == ["procedural_0", "procedural_1"]


def test_one_folder_or_none_still_works(tmp_path: Path, box_asset: Path) -> None:
    _photos(tmp_path / "kitchen", (20, 10))
    assert read_scene_spec(_scene(tmp_path, box_asset, backgrounds="kitchen")).backgrounds == [tmp_path / "kitchen"]
    assert read_scene_spec(_scene(tmp_path, box_asset)).backgrounds == []
    assert read_scene_spec(_scene(tmp_path, box_asset, backgrounds=[])).backgrounds == []


@pytest.mark.parametrize(("backgrounds", "error", "message"), [
    ([1, 2], SceneError, "'backgrounds' must be a folder or a list of folders"),
    ({"a": "b"}, SceneError, "'backgrounds' must be a folder or a list of folders"),
    (["kitchen", "missing"], BackgroundError, "missing: background folder does not exist"),
])
def test_bad_background_entries_are_clear_errors(tmp_path: Path, box_asset: Path, backgrounds, error,
                                                 message: str) -> None:
    _photos(tmp_path / "kitchen", (20, 10))
    with pytest.raises(error, match=message):
        load_scene(read_scene_spec(_scene(tmp_path, box_asset, backgrounds=backgrounds)))
