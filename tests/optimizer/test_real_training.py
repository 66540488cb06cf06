"""The job's labelled photos in the final stage: they reach the files Ultralytics trains the
final detector from (with their labels, repeated to their share), and with a test set the same
detector trained on them alone is reported beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detector.datasets import LabelledSet
from detector.mixing import real_repeats
from detector.model import DetectorConfig, build_detector, load_detector
from optimizer import loop as loop_module
from optimizer.config import OptimizeConfig, merged
from optimizer.loop import run_loop
from optimizer.psi import OptimizerError, PsiConfig
from tests.optimizer.scenes import faced_box_renderer, shifted_psi, target_set

CLASSES = ["box"]
PSI = {"distance_median": 0.35, "elevation_median_deg": 20.0, "elevation_range_deg": [0.0, 50.0]}


TINY = {
    "seed": 3, "outer": {"method": "uniform"}, "psi": {"learnable": [], "initial": PSI},
    "budget": {"outer_iterations": 0, "images_per_iteration": 6, "inner_steps": 2, "final_images": 12, "final_epochs": 1},
    "detector": {"warmup_steps": 0, "arch": "yolov8n-cpu", "image_size": 32, "val_map_every": 0, "sample_images": 0},
    "final": {"batch_size": 6},
}


def tiny_config(**sections) -> OptimizeConfig:
    """No outer iteration: a uniform psi's 12 rendered images and a one-epoch final detector."""
    return OptimizeConfig.from_dict(merged(TINY, sections))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> LabelledSet:
    """Three labelled 'photos' (PNG renders at 40 px, another size than the loop's 32)."""
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    folder = tmp_path_factory.mktemp("photos")
    return target_set(faced_box_renderer(), shifted_psi(config), 3, 40, folder, CLASSES, seed=1)


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each Ultralytics training of the final stage trained from: image files and labels
    as its train loader holds them, and its data folder."""
    seen = []
    original = loop_module.train_final_detector

    def recording(*args, callbacks=None, **kwargs):
        def train_start(trainer) -> None:
            dataset = trainer.train_loader.dataset
            seen.append({"files": list(dataset.im_files), "labels": [dict(label) for label in dataset.labels],
                         "data_dir": kwargs.get("data_dir"), "out_dir": Path(args[3])})

        callbacks = {**(callbacks or {}), "on_train_start": [train_start]}
        return original(*args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(loop_module, "train_final_detector", recording)
    return seen


def test_real_repeats_give_the_photos_their_share_of_an_epoch() -> None:
    assert real_repeats(200, 20, 1 / 3) == 5  # 100 of 300 images per epoch
    assert real_repeats(12, 3, 1 / 3) == 2
    assert real_repeats(10, 50, 1 / 3) == 1  # never fewer than every photo once
    assert real_repeats(200, 20, 0.0) == 0


def _real_rows(training: dict, photos: LabelledSet) -> dict[int, list[int]]:
    """photo index -> rows of the train loader that are copies of it (by file content)."""
    contents = [photo.path.read_bytes() for photo in photos.images]
    rows: dict[int, list[int]] = {}
    for row, file in enumerate(training["files"]):
        data = Path(file).read_bytes()
        if data in contents:
            rows.setdefault(contents.index(data), []).append(row)
    return rows


def test_the_photos_reach_the_final_training_with_their_labels_repeated_to_a_third(
    tmp_path: Path, photos: LabelledSet, trainings: list[dict]
) -> None:
    result = run_loop(tiny_config(), faced_box_renderer(), CLASSES, photos, None, tmp_path, progress_bar=False)
    assert result.status == "completed" and len(trainings) == 1
    training = trainings[0]
    # 12 renders and each of the 3 photos twice: the photos are 6 of 18 images per epoch.
    assert len(training["files"]) == 18
    rows = _real_rows(training, photos)
    assert sorted(rows) == [0, 1, 2] and all(len(found) == 2 for found in rows.values())
    for index, found in rows.items():
        photo = photos.images[index]
        size = torch.tensor([photo.width, photo.height] * 2, dtype=torch.float32)
        xyxy = photo.boxes / size
        expected = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        for row in found:
            label = training["labels"][row]
            assert label["shape"] == (photo.height, photo.width)  # the photo as it is, 40 px
            assert torch.tensor(label["cls"]).flatten().long().tolist() == photo.classes.tolist()
            assert torch.allclose(torch.tensor(label["bboxes"]), expected, atol=1e-5)
    synthetic = [f for row, f in enumerate(training["files"]) if row not in sum(rows.values(), [])]
    assert len(synthetic) == 12 and all(Path(f).parent == (tmp_path / "dataset" / "images").resolve() for f in synthetic)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["final_training_data"]["repeats"] == 2 and report["final_training_data"]["real_share"] == 0.3333
    assert "real_only" not in report  # no test set
    assert str(tmp_path) not in json.dumps(report["final_training_data"])  # a report holds no server path
    # The rendered dataset, the job's deliverable, holds the renders only.
    assert len(list((tmp_path / "dataset" / "images").iterdir())) == 12


def test_a_share_of_zero_trains_on_the_renders_alone(tmp_path: Path, photos: LabelledSet, trainings: list[dict]) -> None:
    run_loop(tiny_config(final={"real_share": 0.0}), faced_box_renderer(), CLASSES, photos, None, tmp_path,
             progress_bar=False)
    assert len(trainings[0]["files"]) == 12 and not _real_rows(trainings[0], photos)
    with pytest.raises(OptimizerError, match=r"final.real_share: must be in \[0, 1\)"):
        run_loop(tiny_config(final={"real_share": 1.0}), faced_box_renderer(), CLASSES, photos, None, tmp_path / "bad",
                 progress_bar=False)


def test_with_a_test_set_the_report_holds_the_real_only_baseline_and_the_difference(
    tmp_path: Path, photos: LabelledSet, trainings: list[dict]
) -> None:
    config = tiny_config()
    result = run_loop(config, faced_box_renderer(), CLASSES, photos, photos, tmp_path, progress_bar=False)
    assert result.status == "completed" and len(trainings) == 2
    baseline = trainings[1]
    # The photos alone, each repeated to the final training's 18 images per epoch.
    assert len(baseline["files"]) == 18
    rows = _real_rows(baseline, photos)
    assert sorted(rows) == [0, 1, 2] and all(len(found) == 6 for found in rows.values())
    # From the config's initial weights, as the final detector (final_init 'initial').
    fresh = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=CLASSES, image_size=32, seed=3)).state_dict()
    started = load_detector(baseline["out_dir"] / "initial.pt").state_dict()
    assert all(torch.equal(started[name], value) for name, value in fresh.items())

    report = json.loads((tmp_path / "report.json").read_text())
    final, real_only = report["final"]["test"], report["real_only"]["test"]
    assert set(real_only["per_class_ap"]) == set(final["per_class_ap"]) == {"box"}
    difference = report["real_only"]["difference"]
    assert difference["map50_95"] == pytest.approx(final["map50_95"] - real_only["map50_95"])
    assert difference["map50"] == pytest.approx(final["map50"] - real_only["map50"])
    assert difference["per_class_ap"]["box"] == pytest.approx(final["per_class_ap"]["box"] - real_only["per_class_ap"]["box"])
    assert real_only["training_data"]["repeats"] == 6 and real_only["training_data"]["synthetic_images"] == 0


def test_the_baseline_can_be_switched_off(tmp_path: Path, photos: LabelledSet, trainings: list[dict]) -> None:
    run_loop(tiny_config(final={"real_only_baseline": False}), faced_box_renderer(), CLASSES, photos, photos, tmp_path,
             progress_bar=False)
    assert len(trainings) == 1
    assert "real_only" not in json.loads((tmp_path / "report.json").read_text())


def test_a_saved_run_that_predates_the_real_photos_did_without_them() -> None:
    """A finished run from before these settings trained on renders alone, harvested nothing and
    had no baseline: it is not reused for a config that asks for them (their defaults)."""
    saved = json.loads(json.dumps(tiny_config().to_dict()))
    for section, name in (("final", "real_share"), ("scene", "harvest_backgrounds"), ("final", "real_only_baseline")):
        del saved[section][name]
    assert tiny_config().differences(saved) == ["final.real_only_baseline", "final.real_share",
                                                "scene.harvest_backgrounds"]
    old = tiny_config(final={"real_share": 0.0, "real_only_baseline": False}, scene={"harvest_backgrounds": False})
    assert old.differences(saved) == []


def test_a_stop_during_the_baseline_cancels_the_run(tmp_path: Path, photos: LabelledSet, trainings: list[dict]) -> None:
    result = run_loop(tiny_config(), faced_box_renderer(), CLASSES, photos, photos, tmp_path, progress_bar=False,
                      should_stop=lambda: len(trainings) == 2)  # once the baseline's training has started
    assert result.status == "cancelled" and len(trainings) == 2
    assert not (tmp_path / "report.json").exists()
