"""Method presets at the API: listed with their settings, chosen by name in a job request,
explicit settings on top; a record stored before presets keeps running the paper's method
without the uniform baseline (so an interrupted job resumes its own checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.presets import DEFAULT_PRESET, PRESETS
from service.job_config import Resolved, loop_config
from service.job_schemas import JobRecord
from tests.service.jobs import setup_job_inputs, tiny_job

RESOLVED = Resolved([("box", "box")], "val")
"""Stand-in paths: what matters here are the settings."""


@pytest.fixture
def inputs(client, make_key, asset_zip: Path, coco_zip: Path) -> tuple[dict, str, str]:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    return headers, asset_id, target_id


def test_the_presets_are_listed_with_their_settings(client, make_key) -> None:
    assert client.get("/v1/presets").status_code == 401
    answer = client.get("/v1/presets", headers=make_key("acme")).json()
    assert answer["default"] == DEFAULT_PRESET == answer["data"][0]["name"] and answer["count"] == len(PRESETS)
    listed = {p["name"]: p for p in answer["data"]}
    assert {"neural-sim", "neural-sim-appearance", "appearance", "uniform", "reinforce", "random-search"} <= set(listed)
    assert listed["neural-sim"]["settings"]["method"] == "neural-sim"
    assert listed["neural-sim-appearance"]["settings"]["alignment_objective"] == "appearance"
    assert listed["neural-sim-appearance"]["settings"]["appearance_parts"] == ["azimuth"]
    assert listed["appearance"]["settings"]["appearance_parts"] == answer["parts"]  # every part by the look
    assert all(p["description"] for p in answer["data"])
    assert answer["parts"][:4] == ["azimuth", "elevation", "distance", "exposure"]


def test_a_job_runs_its_preset_with_its_explicit_settings_on_top(client, inputs) -> None:
    headers, asset_id, target_id = inputs
    request = tiny_job(asset_id, target_id, preset="neural-sim", outer={"estimator": "score", "enumerate_bins": True},
                       budget={"images_per_iteration": 8})
    job = client.post("/v1/jobs", headers=headers, json=request)
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["preset"] == "neural-sim" and "method" not in job.json()["spec"]["outer"]
    # What the worker runs: the stored record's config.
    config = loop_config(JobRecord.model_validate({**job.json(), "tenant": "acme"}).spec, RESOLVED)
    assert (config.preset, config.outer.method, config.outer.estimator, config.outer.enumerate_bins,
            config.outer.alignment_objective) == ("neural-sim", "neural-sim", "score", True, "mean")

    # The default preset (filled in when a request names none), whose settings the job did not override.
    unnamed = {key: value for key, value in tiny_job(asset_id, target_id, budget={"images_per_iteration": 8}).items()
               if key != "preset"}
    default = JobRecord.model_validate({"tenant": "acme", **client.post("/v1/jobs", headers=headers, json=unnamed).json()})
    assert default.spec.preset == DEFAULT_PRESET
    config = loop_config(default.spec, RESOLVED)
    assert (config.outer.enumerate_bins, config.outer.alignment_objective) == (True, "appearance")
    assert config.final.uniform_baseline is True


def test_a_record_stored_before_presets_runs_the_papers_method(inputs) -> None:
    _, asset_id, target_id = inputs
    stored = {"id": "job-0000000000000000", "tenant": "acme", "status": "queued", "assets": [asset_id],
              "target_val": target_id, "method": "neural-sim", "estimator": "both",
              "options": {"alignment_ignores": ["model.22.cv3"]}}  # (a setting jobs may no longer name)
    record = JobRecord.model_validate(stored)
    assert record.spec.preset == "neural-sim"
    config = loop_config(record.spec, RESOLVED)
    assert (config.outer.enumerate_bins, config.outer.alignment_objective, config.final.uniform_baseline) == \
        (False, "mean", False)
    assert config.outer.alignment_ignores == []
