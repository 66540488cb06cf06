"""A job keeps the settings it was accepted with: the API records them (the default preset and
every other default of the nerfsim that accepted it) and the worker runs them, so that a release
that changes a default changes no accepted job, nor sets its checkpoint aside; a record stored
before them gets them at its next run. ``nerfsim optimize`` resumes a run folder with its preset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from optimizer.config import FinalConfig, HypergradientConfig
from optimizer.presets import DEFAULT_PRESET, PRESETS
from service.job_schemas import JobRecord
from service.records import RecordStore
from service.storage import Storage
from service.tasks import WORK_DIR, job_config
from tests.service.conftest import wait_for
from tests.service.jobs import setup_job_inputs, tiny_job

OLD_PRESET = "neural-sim"
"""The default preset of the (pretend) release that accepted the old job."""


@pytest.fixture
def accepted(client, make_key, settings, asset_zip: Path, coco_zip: Path) -> tuple[dict, RecordStore, JobRecord]:
    """(headers, the record store, the record of a job accepted without naming a preset)."""
    headers = make_key("acme")
    request = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip), budget={"images_per_iteration": 8})
    unnamed = {k: v for k, v in request.items() if k != "preset"}  # (the default renders each scene at 8 bins)
    job = client.post("/v1/jobs", headers=headers, json=unnamed)
    assert job.status_code == 201, job.text
    store = RecordStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    tenant = next((settings.storage_root / "tenants").iterdir()).name
    return headers, store, store.get(JobRecord, tenant, job.json()["id"])


def as_accepted_by_an_older_release(store: RecordStore, record: JobRecord) -> JobRecord:
    """The record as a release whose default preset was OLD_PRESET, whose final training used
    no real photos and which had no hessian_product setting yet would have stored it (the
    request, which named no preset, as sent)."""

    def older(current: JobRecord) -> None:
        config = json.loads(json.dumps(current.config))
        config["preset"] = OLD_PRESET
        config["outer"].update(PRESETS[OLD_PRESET].config_settings())
        config["final"]["real_share"] = 0.0
        del config["hypergradient"]["hessian_product"]
        current.config, current.preset = config, OLD_PRESET
        current.spec = current.spec.model_copy(update={"preset": None})

    return store.update(JobRecord, record.tenant, record.id, older)


def test_a_job_records_the_preset_and_settings_it_was_accepted_with(client, accepted) -> None:
    headers, _, record = accepted
    assert record.preset == record.spec.preset == record.config["preset"] == DEFAULT_PRESET
    chosen = PRESETS[DEFAULT_PRESET].config_settings()
    assert {k: v for k, v in record.config["outer"].items() if k in chosen} == chosen
    assert record.config["final"]["real_share"] == FinalConfig().real_share != 0.0  # today's default, not requested
    # No paths: they are resolved when the job runs.
    assert "spec" not in record.config["scene"] and record.config["targets"] == {}
    assert "weights" not in record.config["detector"]
    shown = client.get(f"/v1/jobs/{record.id}", headers=headers).json()
    assert shown["preset"] == DEFAULT_PRESET and "config" not in shown
    assert client.get("/v1/jobs", headers=headers).json()["data"][0]["preset"] == DEFAULT_PRESET


def test_a_job_runs_the_settings_it_was_accepted_with_not_todays_defaults(client, accepted) -> None:
    from optimizer.checkpoint import LoopState, save_checkpoint, set_aside_other_run

    headers, store, record = accepted
    record = as_accepted_by_an_older_release(store, record)
    shown = client.get(f"/v1/jobs/{record.id}", headers=headers).json()
    assert shown["preset"] == OLD_PRESET and "preset" not in shown["spec"]  # the one it runs, not today's default
    config = job_config(record, store)
    assert (config.preset, config.outer.method, config.outer.alignment_objective) == (OLD_PRESET, "neural-sim", "mean")
    assert (config.final.real_share, config.hypergradient.hessian_product) == (0.0, "double-backward")
    assert config.targets.val.startswith(str(store.storage.root)) and config.scene.spec["objects"][0]["name"] == "box"
    # Its checkpoint, left by the older release (which had no hessian_product), is resumed, not set aside.
    older = json.loads(json.dumps(config.to_dict()))
    del older["hypergradient"]["hessian_product"]
    work = store.storage.record_dir("job", record.tenant, record.id) / WORK_DIR
    save_checkpoint(LoopState(config=older, iteration=1, psi={}, detector={}, finetune={}), work)
    assert set_aside_other_run(work, config) is None and (work / "checkpoint.pt").is_file()


def unrecorded(client, headers: dict, store: RecordStore, spec) -> JobRecord:
    """A job of ``spec`` as a record stored before the settings were: none recorded, nor its
    preset besides the spec's."""
    job_id = client.post("/v1/jobs", headers=headers, json=json.loads(spec.model_dump_json())).json()["id"]
    key = f"nerfsim:record:job:{job_id}"
    store.redis.set(key, json.dumps({k: v for k, v in json.loads(store.redis.get(key)).items()
                                     if k not in ("config", "preset")}))
    return JobRecord.model_validate_json(store.redis.get(key))


@pytest.mark.slow
def test_a_worker_runs_the_recorded_settings_and_records_them_for_an_old_record(client, accepted, workers) -> None:
    from optimizer.checkpoint import LoopState, save_checkpoint

    headers, store, pinned = accepted
    pinned = as_accepted_by_an_older_release(store, pinned)
    fresh = unrecorded(client, headers, store, pinned.spec)
    assert fresh.config is None and fresh.preset == fresh.spec.preset == DEFAULT_PRESET  # (its spec's)
    # An old record whose run (under the older release) left a checkpoint: it goes on with that run's settings.
    resumed = unrecorded(client, headers, store, pinned.spec)
    older = json.loads(json.dumps(job_config(resumed.model_copy(update={"config": pinned.config}), store).to_dict()))
    del older["hypergradient"]["hessian_product"]
    work = store.storage.record_dir("job", resumed.tenant, resumed.id) / WORK_DIR
    save_checkpoint(LoopState(config=older, iteration=1, psi={}, detector={}, finetune={}), work)
    (work / "config.json").write_text(json.dumps(older))
    # Every job fails fast once its config is written: their validation set is gone.
    shutil.rmtree(store.storage.record_dir("target", pinned.tenant, pinned.spec.targets.val) / "data" / "images")
    workers.start()
    for job_id in (pinned.id, fresh.id, resumed.id):
        wait_for(lambda: store.get(JobRecord, pinned.tenant, job_id).status == "failed", 180, f"{job_id} to fail")

    def ran(record: JobRecord) -> tuple:
        config = json.loads((store.storage.record_dir("job", record.tenant, record.id) / "config.json").read_text())
        return config["preset"], config["final"]["real_share"], config["hypergradient"]["hessian_product"]

    assert ran(pinned) == ran(resumed) == (OLD_PRESET, 0.0, "double-backward")
    assert (work / "checkpoint.pt").is_file() and not list(work.glob("*.stale.pt"))  # resumable, not set aside
    today = (FinalConfig().real_share, HypergradientConfig().hessian_product)
    assert ran(fresh) == (DEFAULT_PRESET, *today)  # no run yet: today's defaults
    for record in (fresh, resumed):  # recorded at its run: the next one runs the same
        recorded = store.get(JobRecord, record.tenant, record.id)
        assert recorded.config is not None and ran(record) == (recorded.preset,
                                                               recorded.config["final"]["real_share"],
                                                               recorded.config["hypergradient"]["hessian_product"])
