"""The whole lifecycle over HTTP with a real worker process: upload a target set and an asset,
create a job, follow its SSE events in order, download a dataset that opens as COCO and YOLO."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from detector.datasets import load_coco, load_yolo
from tests.service.jobs import read_events, setup_job_inputs, tiny_job

pytestmark = pytest.mark.slow


def test_job_lifecycle_over_http(client, make_key, workers, asset_zip: Path, coco_zip: Path, tmp_path: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    workers.start()

    response = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id, targets={"test": target_id}))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"

    events = read_events(client, job["id"], headers)
    kinds = [(e["event"], e["data"].get("status") or e["data"].get("stage")) for e in events]
    assert kinds[0] == ("status", "queued") and kinds[1] == ("status", "running"), kinds
    assert kinds[-1] == ("status", "succeeded"), (events[-1]["data"], workers.logs()[-3000:])
    ids = [tuple(int(part) for part in e["id"].split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    outer = [e["data"]["iteration"] for e in events if e["event"] == "progress" and e["data"]["stage"] == "outer"]
    assert outer == sorted(outer) and set(outer) == {0, 1}
    stages = [e["data"]["stage"] for e in events if e["event"] == "progress"]
    assert stages.index("outer") < stages.index("final-render") < stages.index("final-train")

    # Reconnecting after the first two events replays the rest, in order.
    replay = read_events(client, job["id"], headers, last_event_id=events[1]["id"])
    assert [e["id"] for e in replay] == [e["id"] for e in events[2:]]

    job = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["finished_at"]
    assert [h["iteration"] for h in job["history"]] == [0, 1]
    assert {"dataset.zip", "psi.json", "detector.pt", "report.json"} <= set(job["artifacts"])

    download = client.get(job["artifacts"]["dataset.zip"], headers=headers)
    assert download.status_code == 200
    dataset = tmp_path / "dataset"
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(dataset)
    coco, yolo = load_coco(dataset / "annotations.json"), load_yolo(dataset)
    assert len(coco) == len(yolo) == 4
    assert coco.class_names == yolo.class_names == ["box"]
    psi = client.get(job["artifacts"]["psi.json"], headers=headers).json()
    assert psi
    report = json.loads(client.get(job["artifacts"]["report.json"], headers=headers).content)
    assert report
    assert client.get(job["artifacts"]["detector.pt"], headers=headers).content[:2] == b"PK"

    # The worker's logs are JSON lines, and the job's lines carry its id.
    lines = [json.loads(line) for line in workers.logs().splitlines() if line.startswith("{")]
    assert {"job started", "job finished"} <= {line["message"] for line in lines if line.get("job_id") == job["id"]}

    metrics = client.get("/metrics").text
    assert 'nerfsim_jobs_finished_total{status="succeeded"}' in metrics
    assert "nerfsim_rendered_images_total" in metrics
