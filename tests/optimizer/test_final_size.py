"""The final dataset and detector at the photos' size and aspect (optimizer.final_size): the
rendered PNGs have the photos' aspect with labels normalised by their own width and height, and
the final detector (and the real-only baseline) trains and is evaluated at final_image_size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from detector.datasets import LabelledImage, LabelledSet, load_dataset
from optimizer import loop as loop_module
from optimizer import arms as arms_module
from optimizer.dataset import render_dataset
from optimizer.final_size import final_image_shape, final_image_size
from optimizer.loop import run_loop
from optimizer.psi import OptimizerError, Psi, PsiConfig
from tests.optimizer.scenes import faced_box_renderer, shifted_psi
from tests.optimizer.test_real_training import CLASSES, tiny_config


def sizes(*shapes: tuple[int, int]) -> LabelledSet:
    """A set of photos of these (width, height), without files (only their sizes are read)."""
    images = [LabelledImage(Path(f"{i}.png"), w, h, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
              for i, (w, h) in enumerate(shapes)]
    return LabelledSet(images, CLASSES, Path("photos"))


def test_the_final_shape_follows_the_photos() -> None:
    config = tiny_config()  # image_size 32
    assert final_image_shape(config, sizes((640, 480), (640, 480), (480, 640))) == (480, 640)
    assert final_image_shape(tiny_config(final={"image_size": 160}), sizes((640, 480))) == (120, 160)
    assert final_image_shape(tiny_config(final={"image_size": 160}), sizes((480, 640))) == (160, 120)
    assert final_image_size(config, sizes((1000, 700), (1010, 700), (2000, 700))) == 1024  # median 1010 -> 32 * 32
    assert final_image_shape(config, None) == (32, 32)  # no photos: the loop's size, square
    assert final_image_shape(tiny_config(final={"image_size": 96}), None) == (96, 96)


def test_the_final_dataset_has_the_photos_aspect_and_labels_normalised_by_width_and_height(tmp_path: Path) -> None:
    psi = Psi.from_target(PsiConfig(num_classes=1, max_objects=2, plain_background=True), azimuth_bin_probs=[1.0] * 8)
    out = render_dataset(faced_box_renderer(8), psi, 4, (24, 40), tmp_path / "wide", CLASSES, seed=2, progress=False)
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["annotations"]
    for image in coco["images"]:
        assert Image.open(out / image["file_name"]).size == (40, 24) and (image["width"], image["height"]) == (40, 24)
    # The YOLO labels read back (normalised by W and H) give the COCO pixel boxes.
    yolo, pixels = load_dataset(out), load_dataset(out / "annotations.json")
    assert len(yolo) == len(pixels) == 4
    for a, b in zip(yolo.images, pixels.images):
        assert (a.width, a.height) == (40, 24)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-3)


def test_the_final_detector_trains_and_is_evaluated_at_final_image_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    photos_dir = tmp_path / "photos"
    render_dataset(faced_box_renderer(), shifted_psi(config), 3, (32, 48), photos_dir, CLASSES, seed=1,
                   progress=False, photometric=None)
    photos = load_dataset(photos_dir / "annotations.json")
    seen: list[int] = []
    original_train = loop_module.train_final_detector

    def recording(*args, callbacks=None, **kwargs):
        def train_start(trainer) -> None:
            seen.append(trainer.args.imgsz)

        return original_train(*args, callbacks={**(callbacks or {}), "on_train_start": [train_start]}, **kwargs)

    evaluated: list[int] = []
    original_evaluate = loop_module.evaluate

    def evaluate(model, dataset, image_size, **kwargs):
        evaluated.append(image_size)
        return original_evaluate(model, dataset, image_size, **kwargs)

    monkeypatch.setattr(loop_module, "train_final_detector", recording)
    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    monkeypatch.setattr(arms_module, "evaluate", evaluate)
    result = run_loop(tiny_config(final={"image_size": 64}), faced_box_renderer(), CLASSES, photos, photos, tmp_path / "run",
                      progress_bar=False)
    assert result.status == "completed"
    assert seen == [64, 64]  # the final detector, then the real-only baseline
    assert evaluated == [64, 64, 64]  # val and test, then the baseline's test
    # 48 x 32 photos: the final renders are 64 x 43, the loop searched at 32 x 32.
    for image in json.loads((tmp_path / "run" / "dataset" / "annotations.json").read_text())["images"]:
        assert (image["width"], image["height"]) == (64, 43)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["final_image"] == {"height": 43, "width": 64}


def test_a_final_image_size_off_the_stride_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptimizerError, match="final.image_size: must be a positive multiple of 32"):
        run_loop(tiny_config(final={"image_size": 50}), faced_box_renderer(), CLASSES, sizes(), None, tmp_path,
                 progress_bar=False)
