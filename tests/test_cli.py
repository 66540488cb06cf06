"""The ``nerfsim`` command line: asset building, dataset rendering, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detector.datasets import load_coco, load_yolo
from service.cli import main
from tests.renderer.meshes import write_box


def write_scene(folder: Path, asset: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    scene = {"name": "test", "objects": [{"name": "box", "path": str(asset)}], **extra}
    (folder / "scene.json").write_text(json.dumps(scene))
    return folder / "scene.json"


def test_render_writes_a_labelled_dataset(tmp_path: Path, box_asset: Path) -> None:
    scene = write_scene(tmp_path / "scene", box_asset, procedural_backgrounds=2, fov_deg=40)
    out = tmp_path / "dataset"
    assert main(["render", "--scene", str(scene), "--num", "6", "--size", "48", "--out", str(out),
                 "--max-objects", "2", "--distance", "0.5", "--threads", "1"]) == 0
    coco = load_coco(out / "annotations.json")
    yolo = load_yolo(out)
    assert len(coco) == len(yolo) == 6
    assert sum(len(image.boxes) for image in coco.images) >= 4
    card = json.loads((out / "card.json").read_text())
    assert "azimuth_deg" in json.dumps(card)


def test_render_takes_width_x_height(tmp_path: Path, box_asset: Path, capsys: pytest.CaptureFixture) -> None:
    scene = write_scene(tmp_path / "scene", box_asset, procedural_backgrounds=1)
    out = tmp_path / "dataset"
    assert main(["render", "--scene", str(scene), "--num", "2", "--size", "40x24", "--out", str(out),
                 "--distance", "0.5", "--threads", "1"]) == 0
    assert {(image.width, image.height) for image in load_yolo(out).images} == {(40, 24)}
    with pytest.raises(SystemExit):
        main(["render", "--scene", str(scene), "--size", "40x", "--out", str(out)])
    assert "--size: expected S or WxH" in capsys.readouterr().err


def test_render_composes_on_several_background_folders(tmp_path: Path, box_asset: Path) -> None:
    """A scene.json may list several photo folders (a job's uploaded background sets)."""
    import numpy as np
    from PIL import Image

    for folder, value in (("kitchen", 30), ("office", 220)):
        (tmp_path / "scene" / folder).mkdir(parents=True)
        Image.fromarray(np.full((40, 60, 3), value, np.uint8)).save(tmp_path / "scene" / folder / "wall.png")
    scene = write_scene(tmp_path / "scene", box_asset, backgrounds=["kitchen", "office"])
    out = tmp_path / "dataset"
    assert main(["render", "--scene", str(scene), "--num", "8", "--size", "32", "--out", str(out),
                 "--distance", "0.5", "--threads", "1"]) == 0
    assert len(load_coco(out / "annotations.json")) == 8
    # Ids 0 and 1 are the folders' photos (in order), -1 a plain colour: the second folder is drawn from.
    assert json.loads((out / "card.json").read_text())["meta"]["background_id"]["max"] == 1


def test_mesh_without_texture_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mesh = write_box(tmp_path / "mesh", texture=False)
    assert main(["asset", "from-mesh", str(mesh), "--out", str(tmp_path / "views"), "--views", "2"]) == 2
    assert "box.mtl" in capsys.readouterr().err


def test_posed_set_naming_a_missing_image_is_a_clear_error(
    tmp_path: Path, box_views: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(box_views, broken)
    (broken / "images" / "frame_00001.png").unlink()
    assert main(["asset", "train", str(broken), "--out", str(tmp_path / "asset")]) == 2
    assert "frame_00001.png" in capsys.readouterr().err
    assert not (tmp_path / "asset").exists()


@pytest.mark.parametrize(
    ("make_scene", "message"),
    [
        (lambda folder, asset: write_scene(folder, asset, backgrounds="photos"), "background folder does not exist"),
        (lambda folder, asset: (folder / "photos").mkdir(parents=True) or write_scene(folder, asset, backgrounds="photos"),
         "background set is empty"),
        (lambda folder, asset: write_scene(folder, folder / "no_such_asset"), "object asset not found"),
        (lambda folder, asset: folder.mkdir() or (folder / "scene.json").write_text("{") and folder / "scene.json",
         "not a valid scene description"),
    ],
)
def test_bad_scenes_are_clear_errors(tmp_path: Path, box_asset: Path, capsys: pytest.CaptureFixture,
                                     make_scene, message: str) -> None:
    scene = make_scene(tmp_path / "scene", box_asset)
    assert main(["render", "--scene", str(scene), "--num", "1", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "annotations.json").exists()


def test_optimize_reads_detector_weights_without_running_them(tmp_path: Path, box_asset: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A job's detector.weights go through the safe loader: a pickle that runs code is refused, unrun."""
    import torch

    from tests.detector.test_checkpoint import _RunsCode

    scene = write_scene(tmp_path / "scene", box_asset, procedural_backgrounds=1, fov_deg=40)
    target = tmp_path / "target"
    assert main(["render", "--scene", str(scene), "--num", "4", "--size", "32", "--out", str(target),
                 "--distance", "0.5", "--threads", "1"]) == 0
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": _RunsCode(marker)}, hostile)
    config = {"scene": {"assets": [str(box_asset)], "procedural_backgrounds": 1},
              "targets": {"val": str(target / "annotations.json")},
              "detector": {"weights": str(hostile), "image_size": 32, "warmup_steps": 0},
              "budget": {"outer_iterations": 1, "images_per_iteration": 8, "inner_steps": 1, "final_images": 1},
              "device": "cpu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    capsys.readouterr()

    assert main(["optimize", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]) == 2
    assert "hostile.pt: not a YOLO detection checkpoint: it references posix.system" in capsys.readouterr().err
    assert not marker.exists()
