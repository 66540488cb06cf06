"""``nerfsim demo`` end to end (quick budget) on a one-object scene of the test box: the
embedded service starts, the job runs through the API, and the results land in the output
folder."""

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
    printed = capsys.readouterr().out
    assert f"Results in {out.resolve()}" in printed and "final detector on the test set: mAP50-95" in printed
