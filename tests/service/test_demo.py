"""``nerfsim demo`` end to end (quick budget) on a one-object scene of the test box: the
embedded service starts, the job runs through the API with the default preset, the results
land in the output folder, and the demo scores them on a test set that is not its validation set
against the job's uniform baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.datasets import load_coco, load_yolo
from service.demo import run_demo
from service.settings import ServiceSettings

pytestmark = pytest.mark.slow


def test_demo_writes_dataset_detector_and_report(box_asset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"name": "box", "objects": [{"name": "box", "path": str(box_asset)}],
                                 "procedural_backgrounds": 2}))
    out = tmp_path / "demo"
    job = run_demo(out, ServiceSettings(redis_url=None, storage_root=tmp_path / "storage"), quick=True, scene=str(scene))
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert len(load_coco(out / "dataset" / "annotations.json")) == len(load_yolo(out / "dataset")) == 32
    assert (out / "detector.pt").stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["status"] == "completed"
    captured = capsys.readouterr()
    printed = captured.out
    assert f"Results in {out.resolve()}" in printed and "final detector on the test set: mAP50-95" in printed
    # Not a terminal: plain lines, each long stage's last one its end, and no bar.
    assert "\r" not in captured.err, captured.err[-2000:]
    for line in ("closed loop: 3/3", "final rendering: 32/32", "final training: 2/2", "job succeeded"):
        assert line in captured.err.splitlines() or any(l.startswith(line + "  ") for l in captured.err.splitlines()), line
    # The test set is not the validation set: other targets, other images (the same shift).
    assert job["spec"]["targets"]["test"] != job["spec"]["targets"]["val"]
    val, test = (load_coco(out / "uploads" / role / "annotations.json") for role in ("validation", "test"))
    assert not {p.path.read_bytes() for p in val.images} & {p.path.read_bytes() for p in test.images}
    report = json.loads((out / "report.json").read_text())
    # ...and the demo says what the loop gained over uniform psi on it.
    assert report["baseline"]["evaluated_on"] == "test set" and "optimised - uniform:" in printed
    assert job["spec"]["preset"] == "appearance"  # the default preset
