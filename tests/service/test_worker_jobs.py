"""Jobs and asset builds on a real worker process: cancelling a running job (it keeps what it
made), a job that fails on bad input (its reason, no retry), and assets built from a mesh and
from a posed image set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.archives import zip_folder
from tests.renderer.meshes import SMALL_MODEL, write_box
from tests.service.conftest import wait_for
from tests.service.jobs import read_events, setup_job_inputs, tiny_job, upload

pytestmark = pytest.mark.slow

TINY_BUILD = {
    "views": 12, "test_views": 2, "view_size": 32, "spp": 2, "train_steps": 40, "train_minutes": 1,
    "model": {"plane_resolutions": list(SMALL_MODEL.plane_resolutions), "plane_components": SMALL_MODEL.plane_components,
              "hidden_dim": SMALL_MODEL.hidden_dim, "occupancy_resolution": SMALL_MODEL.occupancy_resolution},
    "trainer": {"rays_per_step": 512, "samples_per_ray": 32, "hull_fit_steps": 20, "occupancy_every": 20,
                "visibility_rays": 4000},
}


def finished(client, path: str, headers: dict, states: tuple[str, ...]):
    return lambda: (record := client.get(path, headers=headers).json())["status"] in states and record


def test_cancel_fail_and_build_on_a_worker(client, make_key, workers, settings, asset_zip: Path, coco_zip: Path,
                                            box_views: Path, tmp_path: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    long_job = tiny_job(asset_id, target_id)
    long_job["budget"] = {**long_job["budget"], "outer_iterations": 50}
    running = client.post("/v1/jobs", headers=headers, json=long_job).json()
    mesh = upload(client, "/v1/assets", headers, zip_folder(write_box(tmp_path / "mesh").parent, tmp_path / "mesh.zip"),
                  name="mesh-box", kind="mesh", build=json.dumps(TINY_BUILD))
    views = upload(client, "/v1/assets", headers, zip_folder(box_views, tmp_path / "views.zip"),
                   name="views-box", kind="posed-images", build=json.dumps(TINY_BUILD))
    assert mesh["status"] == views["status"] == "building"
    workers.start()

    # Cancel the running job after its first outer iteration.
    wait_for(lambda: client.get(f"/v1/jobs/{running['id']}", headers=headers).json()["history"], 120, "an iteration")
    assert client.post(f"/v1/jobs/{running['id']}/cancel", headers=headers).status_code == 202
    cancelled = wait_for(finished(client, f"/v1/jobs/{running['id']}", headers, ("cancelled", "failed", "succeeded")),
                         60, "the job to stop")
    assert cancelled["status"] == "cancelled", cancelled["error"]
    assert len(cancelled["history"]) < 50 and cancelled["artifacts"]  # what it made so far is kept
    assert "checkpoint.pt" not in cancelled["artifacts"]
    assert read_events(client, running["id"], headers)[-1]["data"]["status"] == "cancelled"

    # A job whose validation set vanished fails with the reason, and is not retried.
    doomed = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id)).json()
    shutil.rmtree(settings.storage_root / "tenants" / next((settings.storage_root / "tenants").iterdir()).name
                  / "targets" / target_id / "data" / "images")
    failed = wait_for(finished(client, f"/v1/jobs/{doomed['id']}", headers, ("failed", "succeeded")), 120, "failure")
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "missing image file" in failed["error"] and str(settings.storage_root) not in failed["error"]

    for asset in (mesh, views):
        built = wait_for(finished(client, f"/v1/assets/{asset['id']}", headers, ("ready", "failed")), 180, "a build")
        assert built["status"] == "ready", built["error"]
        assert built["details"]["training"]["steps"] > 0 and "held_out_psnr_db" in built["details"]["training"]
