"""The ``nerfsim asset`` splat commands (import, train, bake) and rendering a scene that holds
the splats they make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detector.datasets import load_coco
from renderer.splat_asset import load_splat_asset
from renderer.splat_ply import save_splat_ply
from service.cli import main
from tests.renderer.splats import random_gaussians


def test_import_train_bake_and_render(tmp_path: Path, box_views: Path, box_asset: Path, capsys) -> None:
    g = random_gaussians(120, degree=0, dtype=torch.float32, spread=0.03, log_scale=-4.0)
    save_splat_ply(g, tmp_path / "capture.ply")
    assert main(["asset", "import-splat", str(tmp_path / "capture.ply"), "--out", str(tmp_path / "imported"),
                 "--scale", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "capture" and printed["source"]["scale"] == 2.0
    assert load_splat_asset(tmp_path / "imported")[1].num_gaussians == 120

    assert main(["asset", "train", str(box_views), "--out", str(tmp_path / "trained"), "--representation", "splat",
                 "--steps", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5
    assert main(["asset", "bake", str(box_asset), "--out", str(tmp_path / "baked"), "--views", "4", "--size", "32",
                 "--steps", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["baked_views"] == 4

    scene = {"name": "splats", "objects": [{"name": name, "path": name} for name in ("imported", "trained", "baked")],
             "procedural_backgrounds": 1}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    assert main(["render", "--scene", str(tmp_path / "scene.json"), "--num", "4", "--size", "32", "--out",
                 str(tmp_path / "dataset"), "--distance", "0.5", "--threads", "1"]) == 0
    dataset = load_coco(tmp_path / "dataset" / "annotations.json")
    assert len(dataset) == 4 and sum(len(image.boxes) for image in dataset.images) >= 2


def test_a_bad_splat_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.ply").write_text("ply\nformat ascii 1.0\nend_header\n")
    assert main(["asset", "import-splat", str(tmp_path / "broken.ply"), "--out", str(tmp_path / "asset")]) == 2
    assert "broken.ply: no 'vertex' element" in capsys.readouterr().err
    assert not (tmp_path / "asset").exists()
