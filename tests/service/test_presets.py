"""Method presets at the API: listed with their settings, chosen by name in a job request,
explicit settings on top; a record stored before presets keeps running the paper's method
without the uniform baseline (so an interrupted job resumes its own checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.presets import DEFAULT_PRESET, PRESETS
from service.schemas import JobRecord
from tests.service.jobs import setup_job_inputs, tiny_job


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
    assert {"neural-sim", "neural-sim-appearance", "uniform", "reinforce", "random-search"} <= set(listed)
    assert listed["neural-sim"]["settings"]["method"] == "neural-sim"
    assert listed["neural-sim-appearance"]["settings"]["alignment_objective"] == "appearance"
    assert all(p["description"] for p in answer["data"])


def test_a_job_runs_its_preset_with_its_explicit_settings_on_top(client, inputs) -> None:
    headers, asset_id, target_id = inputs
    request = tiny_job(asset_id, target_id, preset="neural-sim", estimator="score",
                       options={**tiny_job(asset_id, target_id)["options"], "enumerate_bins": True},
                       budget={**tiny_job(asset_id, target_id)["budget"], "images_per_iteration": 8})
    job = client.post("/v1/jobs", headers=headers, json=request)
    assert job.status_code == 201, job.text
    assert job.json()["preset"] == "neural-sim" and job.json()["method"] is None
    # What the worker runs: the stored record's config.
    config = JobRecord.model_validate({**job.json(), "tenant": "acme"}).optimize_config("scene.json", "val", None)
    outer = config.outer
    assert (config.preset, outer.method, outer.estimator, outer.enumerate_bins, outer.alignment_objective) == \
        ("neural-sim", "neural-sim", "score", True, "mean")

    # The default preset, whose settings the job did not override.
    default = JobRecord.model_validate({"tenant": "acme", **client.post("/v1/jobs", headers=headers, json={
        **tiny_job(asset_id, target_id), "preset": DEFAULT_PRESET,
        "budget": {**tiny_job(asset_id, target_id)["budget"], "images_per_iteration": 8}}).json()})
    config = default.optimize_config("scene.json", "val", None)
    assert (config.outer.enumerate_bins, config.outer.alignment_objective) == (True, "appearance")
    assert config.final.uniform_baseline is True


def test_a_record_stored_before_presets_runs_the_papers_method(client, inputs) -> None:
    headers, asset_id, target_id = inputs
    stored = client.post("/v1/jobs", headers=headers, json=tiny_job(asset_id, target_id)).json()
    del stored["preset"]
    stored["method"], stored["estimator"] = "neural-sim", "both"
    stored["options"]["alignment_ignores"] = ["model.22.cv3"]  # a setting jobs may no longer name
    record = JobRecord.model_validate({**stored, "tenant": "acme"})
    assert record.preset == "neural-sim" and "alignment_ignores" not in record.options.model_dump()
    config = record.optimize_config("scene.json", "val", None)
    assert (config.outer.enumerate_bins, config.outer.alignment_objective, config.final.uniform_baseline) == \
        (False, "mean", False)
