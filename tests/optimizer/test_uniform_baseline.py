"""Every job's uniform baseline: the same detector, trained the same way on as many renders
from the starting psi, scored on the same test set (or on validation photos the run never
saw), and the report holding both arms with the difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detector.datasets import LabelledSet
from detector.evaluate import Detections
from detector.mixing import real_repeats
from optimizer import loop as loop_module
from optimizer.config import OptimizeConfig, merged
from optimizer.loop import run_loop
from optimizer.psi import PARTS, Psi, PsiConfig
from optimizer.uniform_baseline import hold_out, paired_bootstrap, psi_before_after
from tests.optimizer.scenes import SHIFTED_AZIMUTH, faced_box_renderer, shifted_psi, target_set

CLASSES = ["box"]
PSI = {"distance_median": 0.35, "elevation_median_deg": 20.0, "elevation_range_deg": [0.0, 50.0]}


TINY = {
    "preset": "uniform", "seed": 3, "outer": {"method": "oracle"},
    "psi": {"oracle": {"azimuth_bin_probs": SHIFTED_AZIMUTH}, "learnable": [], "initial": PSI, "priors": False},
    "budget": {"outer_iterations": 0, "images_per_iteration": 6, "inner_steps": 2, "final_images": 8, "final_epochs": 1},
    "detector": {"warmup_steps": 0, "arch": "yolov8n-cpu", "image_size": 32, "val_map_every": 0, "sample_images": 0},
    "final": {"batch_size": 4, "real_only_baseline": False},
}


def tiny_config(*changes: dict, **sections) -> OptimizeConfig:
    """The oracle (a psi far from the start) without outer iterations, a one-epoch final detector."""
    return OptimizeConfig.from_dict(merged(TINY, *changes, sections))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> LabelledSet:
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    return target_set(faced_box_renderer(), shifted_psi(config), 8, 32, tmp_path_factory.mktemp("photos"), CLASSES, seed=1)


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Each final-stage training: its data folder, epochs and train-loader files."""
    seen = []
    original = loop_module.train_final_detector

    def recording(*args, callbacks=None, **kwargs):
        def train_start(trainer) -> None:
            seen.append({"data_dir": kwargs.get("data_dir"), "epochs": trainer.epochs, "batch": trainer.batch_size,
                         "files": list(trainer.train_loader.dataset.im_files)})

        return original(*args, callbacks={**(callbacks or {}), "on_train_start": [train_start]}, **kwargs)

    monkeypatch.setattr(loop_module, "train_final_detector", recording)
    return seen


def _images(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((folder / "images").iterdir())]


def test_the_baseline_arm_trains_on_renders_from_the_starting_psi_with_the_same_budget(
    tmp_path: Path, photos: LabelledSet, trainings: list[dict]
) -> None:
    renderer = faced_box_renderer()
    result = run_loop(tiny_config(), renderer, CLASSES, photos, photos, tmp_path / "oracle", progress_bar=False)
    assert result.status == "completed" and len(trainings) == 2
    final, baseline = trainings
    assert baseline["data_dir"] == tmp_path / "oracle" / "uniform_baseline" / "data"
    # The same budget: images per epoch (renders and the photos' repeats), epochs, batch.
    assert len(baseline["files"]) == len(final["files"]) == 8 + 8 * real_repeats(8, 8, 1 / 3)
    assert (baseline["epochs"], baseline["batch"]) == (final["epochs"], final["batch"]) == (1, 4)
    # The baseline's renders are what a run that never moves psi renders (the same draws):
    # uniform psi, not the oracle's.
    uniform = run_loop(tiny_config(outer={"method": "uniform"}), renderer, CLASSES, photos, photos, tmp_path / "uniform",
                       progress_bar=False)
    assert uniform.status == "completed"
    start_images = _images(tmp_path / "uniform" / "dataset")
    assert _images(tmp_path / "oracle" / "uniform_baseline" / "dataset") == start_images
    assert _images(tmp_path / "oracle" / "dataset") != start_images

    report = json.loads((tmp_path / "oracle" / "report.json").read_text())
    arm, test = report["baseline"], report["final"]["test"]
    assert arm["evaluated_on"] == "test set" and arm["test_images"] == 8
    assert set(arm["test"]["per_class_ap"]) == set(test["per_class_ap"]) == {"box"}
    difference = report["difference"]
    assert difference["map50_95"] == pytest.approx(test["map50_95"] - arm["test"]["map50_95"])
    interval = difference["map50_95_bootstrap"]
    assert interval["resamples"] > 0 and interval["low"] <= interval["high"]
    assert report["images_rendered"] == 8 + 8
    assert set(report["psi_before_after"]) == set()  # nothing learnable
    # A uniform job is its own baseline: it says so instead of training it again.
    assert "skipped" in json.loads((tmp_path / "uniform" / "report.json").read_text())["baseline"]


def test_the_baseline_can_be_switched_off(tmp_path: Path, photos: LabelledSet, trainings: list[dict]) -> None:
    run_loop(tiny_config(final={"uniform_baseline": False}), faced_box_renderer(), CLASSES, photos, photos, tmp_path,
             progress_bar=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(trainings) == 1 and "baseline" not in report and "difference" not in report


def test_without_a_test_set_a_quarter_of_the_photos_is_held_out_of_the_whole_run(photos: LabelledSet) -> None:
    seen, held = hold_out(photos, seed=3)
    assert (len(seen), len(held)) == (6, 2)
    assert {item.path for item in seen.images}.isdisjoint(item.path for item in held.images)
    assert hold_out(photos, seed=3)[1].images == held.images  # the same part for a resumed run
    few = LabelledSet(photos.images[:7], photos.class_names, photos.source)
    assert hold_out(few, seed=3) == (few, None)


def test_a_job_without_a_test_set_runs_on_the_photos_it_does_not_hold_out(
    tmp_path: Path, photos: LabelledSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_optimization: the loop, its priors, its harvested backgrounds and its final training
    get the kept photos only; the held-out ones are the test set, said so in the report."""
    seen: dict = {}
    monkeypatch.setattr(loop_module, "photo_backgrounds", lambda kept: seen.setdefault("harvested_from", kept) and None)
    monkeypatch.setattr(loop_module, "run_loop", lambda config, renderer, names, val, test, out, **kwargs:
                        seen.update(val=val, test=test, held_out=kwargs["test_held_out"]))
    loop_module.run_optimization(tiny_config(targets={"val": str(photos.source)},
                                             scene={"spec": "demo", "harvest_backgrounds": True}),
                                 tmp_path, progress_bar=False)
    kept, held = hold_out(photos, seed=3)
    assert [i.path for i in seen["val"].images] == [i.path for i in seen["harvested_from"].images] == \
        [i.path for i in kept.images]
    assert [i.path for i in seen["test"].images] == [i.path for i in held.images] and seen["held_out"]
    # Switched off, or with nothing to train a baseline for, the run keeps every photo.
    for settings in ({"final": {"uniform_baseline": False}}, {"budget": {"final_images": 0}}):
        loop_module.run_optimization(tiny_config(settings, targets={"val": str(photos.source)}, scene={"spec": "demo"}),
                                     tmp_path, progress_bar=False)
        assert len(seen["val"]) == 8 and seen["test"] is None and not seen["held_out"]


def test_the_bootstrap_of_one_detector_against_itself_is_zero() -> None:
    boxes = [torch.tensor([[2.0, 2.0, 12.0, 12.0]]), torch.tensor([[4.0, 4.0, 20.0, 20.0]])]
    classes = [torch.tensor([0]), torch.tensor([0])]
    found = [Detections(b, torch.tensor([0.9]), torch.tensor([0])) for b in boxes]
    missed = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * 2
    same = paired_bootstrap((found, boxes, classes), (found, boxes, classes), CLASSES, seed=0, resamples=20)
    assert same["mean"] == same["low"] == same["high"] == 0.0
    better = paired_bootstrap((found, boxes, classes), (missed, boxes, classes), CLASSES, seed=0, resamples=20)
    assert better["low"] > 0.9


def test_every_learnable_part_has_its_before_and_after() -> None:
    """Each psi part's snapshot entry is found, whatever it is named (SNAPSHOT_KEYS)."""
    config = PsiConfig(num_classes=2, max_objects=2, num_backgrounds=2, pose_probs=((0.5, 0.5), (1.0,)))
    snapshot = Psi(config).snapshot()
    parts = [part for part in PARTS if part != "appearance"]  # no object here has embeddings
    assert set(psi_before_after(snapshot, snapshot, parts)) == set(parts)
