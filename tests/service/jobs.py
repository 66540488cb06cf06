"""Helpers of the job tests: tiny job requests, uploads, and reading an SSE stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

TINY_JOB: dict[str, Any] = {
    # The paper's preset: 4 images per iteration (the default preset renders every scene at each
    # of the 8 azimuth bins). The service's own tests of the default: tests/service/test_presets.py.
    "preset": "neural-sim",
    "device": "cpu",
    "scene": {"procedural_backgrounds": 1},
    "budget": {"outer_iterations": 2, "images_per_iteration": 4, "inner_steps": 2, "final_images": 4,
               "final_epochs": 1},
    "hypergradient": {"inverse_hessian_steps": 1},
    "psi": {"initial": {"distance_median": 0.5}},
    "detector": {"image_size": 32, "sample_images": 1, "val_batch_size": 8},
    "final": {"batch_size": 4},
}
"""A JobSpec without its references (tiny_job adds them)."""


def upload(client: TestClient, path: str, headers: dict, archive: Path, **form) -> dict:
    with open(archive, "rb") as handle:
        response = client.post(path, headers=headers, files={"file": (archive.name, handle)}, data=form)
    assert response.status_code == 201, response.text
    return response.json()


def stored_files(storage_root: Path) -> list[Path]:
    """Files under the storage root other than API keys (what uploads left behind)."""
    return [p for p in storage_root.rglob("*") if p.is_file() and p.relative_to(storage_root).parts[0] != "keys"]


def setup_job_inputs(client: TestClient, headers: dict, asset_zip: Path, coco_zip: Path) -> tuple[str, str]:
    """Upload the test box asset and its COCO validation set; returns (asset id, target id)."""
    asset = upload(client, "/v1/assets", headers, asset_zip, name="box", kind="nerfsim")
    target = upload(client, "/v1/targets", headers, coco_zip, name="real", role="both", format="coco")
    return asset["id"], target["id"]


def tiny_job(asset_id: str, target_id: str, **changes) -> dict:
    """TINY_JOB for these records, with ``changes``: a section's fields are merged into its own."""
    job = {**TINY_JOB, "scene": {**TINY_JOB["scene"], "assets": [asset_id]}, "targets": {"val": target_id}}
    return merged(job, changes)


def merged(job: dict, changes: dict) -> dict:
    """``job`` with ``changes``, a section's fields merged into the section's."""
    return {**job, **{key: {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
                      for key, value in changes.items()}}


def read_events(client: TestClient, job_id: str, headers: dict, last_event_id: str | None = None) -> list[dict]:
    """Every SSE event of a job until its final status: [{"event", "id", "data"}]."""
    events, current = [], {}
    request_headers = {**headers, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=request_headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    events.append(current)
                    current = {}
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[field] = json.loads(value) if field == "data" else value
    if current:
        events.append(current)
    return events


def strings(value) -> list[str]:
    """Every string inside a JSON value (to look for server paths in a downloaded report)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []
