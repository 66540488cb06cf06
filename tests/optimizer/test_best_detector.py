"""The loop's best detector: saved when an iteration's validation mAP50-95 beats every earlier
one, named in the report, and the same detector after a resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from detector.datasets import LabelledSet
from detector.evaluate import DetectionMetrics, evaluate
from detector.model import DetectorConfig, build_detector, load_detector
from optimizer.best_detector import BEST_LOOP_DETECTOR, best_iteration, keep_if_best
from tests.optimizer.test_loop import _run, tiny_config, val_set  # noqa: F401  (the loop tests' fixture)


def scored(value: float) -> DetectionMetrics:
    return DetectionMetrics(map50_95=value, map50=value, per_class_ap={})


def same_weights(path: Path, model) -> bool:
    saved = load_detector(path).state_dict()
    return all(torch.equal(saved[k].float(), v.float()) for k, v in model.state_dict().items())


def test_only_a_better_iteration_replaces_the_kept_detector(tmp_path: Path) -> None:
    history: list[dict] = []
    models = []
    for t, value in enumerate([0.10, None, 0.30, 0.30, 0.20]):
        torch.manual_seed(t)
        model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box"]))
        models.append(model)
        kept = keep_if_best(model, t, scored(value) if value is not None else None, history, tmp_path)
        assert kept == (t in (0, 2)), t
        history.append({"iteration": t, "val_map50_95": value})
    assert same_weights(tmp_path / BEST_LOOP_DETECTOR, models[2])  # the first of the two 0.30s
    assert best_iteration(history) == {"iteration": 2, "val_map50_95": 0.30, "file": BEST_LOOP_DETECTOR}
    assert best_iteration([{"iteration": 0, "val_map50_95": None}]) is None
    assert not list(tmp_path.glob("*.partial"))


def test_the_loop_keeps_its_best_detector_and_names_it_in_the_report(tmp_path: Path, val_set: LabelledSet,
                                                                     monkeypatch) -> None:
    from optimizer import loop as loop_module

    scored_models: dict[int, dict] = {}  # iteration -> the weights its validation mAP was measured on
    original = loop_module._Loop.val_map

    def recording_val_map(self, model, iteration, always=False):
        scored_models[iteration] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return original(self, model, iteration, always)

    monkeypatch.setattr(loop_module._Loop, "val_map", recording_val_map)
    config = tiny_config()
    whole = _run(config, val_set, tmp_path / "whole")
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    best = report["best_loop_detector"]
    scores = [r["val_map50_95"] for r in whole.history]
    assert best["iteration"] == scores.index(max(scores)) and best["val_map50_95"] == max(scores)
    # The file is the detector that scored it (each iteration trains the detector further).
    kept = load_detector(tmp_path / "whole" / BEST_LOOP_DETECTOR)
    assert all(torch.equal(kept.state_dict()[k].float(), v.float()) for k, v in scored_models[best["iteration"]].items())
    assert not torch.equal(scored_models[0]["model.0.conv.weight"], scored_models[2]["model.0.conv.weight"])
    assert evaluate(kept, val_set, config.detector.image_size, progress=False).map50_95 == best["val_map50_95"]

    # A run cancelled after its first iteration and resumed keeps the same detector.
    asked = []

    def stop_before_the_second_iteration() -> bool:
        asked.append(True)
        return len(asked) == 2

    _run(config, val_set, tmp_path / "split", should_stop=stop_before_the_second_iteration)
    _run(config, val_set, tmp_path / "split")
    assert json.loads((tmp_path / "split" / "report.json").read_text())["best_loop_detector"] == best
    assert same_weights(tmp_path / "split" / BEST_LOOP_DETECTOR, kept)
