"""Faults of a deployment on one machine (API process, worker processes, Redis, loopback): a
worker killed with SIGKILL mid-job (the job resumes from its checkpoint and ends exactly as an
uninterrupted run of the same seeded job), a full artifact disk (the job fails with the
reason, no corrupt artifact), and training that diverges to NaN (the job fails at once, the
worker lives on). Restarts of Redis and of the API: tests/service/test_resilience.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
import redis
import torch
from nerfsim_client import Client
from rq.job import Job

from benchmarks.scale import (
    ApiServer,
    log_entries,
    small_job,
    upload_inputs,
    wait_for_jobs,
    wait_for_workers,
    WorkerGroup,
)
from service.keys import KeyStore
from service.settings import ServiceSettings
from service.storage import Storage
from tests.service.conftest import wait_for

pytestmark = pytest.mark.slow


def worker_pid(settings: ServiceSettings, job_id: str) -> int:
    """The process running RQ job ``job_id`` (worker names are host.pid.random)."""
    name = Job.fetch(job_id, connection=redis.Redis.from_url(settings.redis_url)).worker_name
    return int(name.split(".")[-2])


def artifact_bytes(client: Client, job_id: str, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return client.get_job(job_id).download(name, folder).read_bytes()


def test_a_killed_worker_resumes_and_ends_as_an_uninterrupted_run(api_client: Client, settings: ServiceSettings,
                                                                  small_job_inputs, tmp_path: Path) -> None:
    request = small_job(*small_job_inputs, seed=7, outer_iterations=4)
    with WorkerGroup(settings, tmp_path / "workers.log") as group:
        group.start(2)
        wait_for_workers(settings, 2)
        uninterrupted = api_client.create_job(request).id
        killed = api_client.create_job(request).id
        # Both run at once, one per worker; kill the second's once two iterations are checkpointed.
        wait_for(lambda: len(api_client.get_job(killed).history) >= 2, 180, "two outer iterations")
        victim = worker_pid(settings, killed)
        assert victim != worker_pid(settings, uninterrupted)
        os.kill(victim, signal.SIGKILL)
        assert api_client.get_job(killed).status == "running"
        group.start(1)  # the orchestrator's replacement
        records = {r["id"]: r for r in wait_for_jobs(api_client, [uninterrupted, killed], 300)}
    first, second = records[uninterrupted], records[killed]
    assert first["status"] == second["status"] == "succeeded", (first["error"], second["error"])
    assert (first["attempts"], second["attempts"]) == (1, 2)
    retries = [e for e in log_entries(tmp_path / "workers.log") if e.get("message") == "job will be retried"]
    assert [(e["job_id"], e["reason"].split(" during ")[0], e["counted"]) for e in retries] == [
        (killed, "the worker stopped responding (killed, or out of memory)", False)]
    # The same seeded job gives the same results, killed or not: every iteration's metrics,
    # the learned distribution, the final metrics and the detector's weights (wall times aside).
    assert untimed(second["history"]) == untimed(first["history"]) and len(first["history"]) == 4
    assert json.loads(artifact_bytes(api_client, uninterrupted, "psi.json")) == json.loads(
        artifact_bytes(api_client, killed, "psi.json"))
    reports = [json.loads(artifact_bytes(api_client, job, "report.json")) for job in (uninterrupted, killed)]
    assert reports[0]["final"] == reports[1]["final"] and reports[0]["final"]
    assert untimed(reports[0]["history"]) == untimed(reports[1]["history"])
    states = [detector_state(artifact_bytes(api_client, job, "detector.pt")) for job in (uninterrupted, killed)]
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def untimed(history: list[dict]) -> list[dict]:
    """History entries without their wall times."""
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def detector_state(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a saved detector."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    state = saved["model"].state_dict() if isinstance(saved, dict) and hasattr(saved.get("model"), "state_dict") else saved
    if not isinstance(state, dict):
        state = state.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert tensors, "no weights in detector.pt"
    return tensors


@pytest.fixture
def tiny_disk(settings: ServiceSettings):
    """Mount a 2 MiB tmpfs at a folder (root only); unmounted at the end."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "2m") -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("needs root to mount a tmpfs (a full disk)")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def check_artifact(name: str, data: bytes) -> None:
    """An artifact is whole: it parses as what its name says."""
    if name.endswith(".json"):
        json.loads(data)
    elif name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as bundle:
            assert bundle.testzip() is None, name
    elif name.endswith(".pt"):
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    elif name.endswith(".png"):
        from PIL import Image

        Image.open(io.BytesIO(data)).load()


def test_a_full_artifact_disk_fails_the_job_with_the_reason_and_no_corrupt_artifact(
        api: ApiServer, settings: ServiceSettings, small_inputs, tiny_disk, tmp_path: Path) -> None:
    tenant = f"full-{uuid.uuid4().hex[:8]}"
    key, _ = KeyStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root)).create(tenant)
    client = Client(api.url, key, progress=False)
    inputs = upload_inputs(client, small_inputs)
    # The tenant's jobs live on a 2 MiB disk: the job's record fits, the loop's checkpoint not.
    jobs_disk = tiny_disk(Storage(settings.storage_root).tenants_dir() / tenant / "jobs")
    job = client.create_job(small_job(*inputs, outer_iterations=2)).id
    with WorkerGroup(settings, tmp_path / "workers.log") as group:
        (worker,) = group.start(1)
        wait_for_workers(settings, 1)
        (record,) = wait_for_jobs(client, [job], 300)
        assert worker.poll() is None  # the worker lives on
    assert record["status"] == "failed"
    assert "No space left on device" in record["error"], record["error"]
    assert str(settings.storage_root) not in record["error"]
    # Whatever was published is whole; nothing half-written is published or left behind.
    for name in record["artifacts"]:
        check_artifact(name, artifact_bytes(client, job, name))
    job_dir = jobs_disk / job
    assert not list(job_dir.glob("*.partial")) and not list(job_dir.glob(".*.tmp")), sorted(job_dir.iterdir())
    # The record on disk (what recovery after a Redis data loss reads) says so too.
    on_disk = json.loads((job_dir / "record.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["error"] == record["error"]
    published = job_dir / "artifacts"
    assert sorted(p.name for p in published.iterdir()) == sorted(record["artifacts"]) if published.exists() else not record["artifacts"]


def test_diverging_training_fails_at_once_and_the_worker_lives_on(api_client: Client, settings: ServiceSettings,
                                                                  small_job_inputs, tmp_path: Path) -> None:
    # A Neumann series whose step is far too large for the Hessian grows without bound.
    diverging = small_job(*small_job_inputs, hypergradient={"inverse_hessian": "neumann", "neumann_scale": 10.0,
                                                            "inverse_hessian_steps": 100})
    with WorkerGroup(settings, tmp_path / "workers.log") as group:
        (worker,) = group.start(1)
        wait_for_workers(settings, 1)
        bad = api_client.create_job(diverging).id
        (failed,) = wait_for_jobs(api_client, [bad], 180)
        good = api_client.create_job(small_job(*small_job_inputs)).id
        (succeeded,) = wait_for_jobs(api_client, [good], 180)
        assert worker.poll() is None
    assert failed["status"] == "failed" and failed["attempts"] == 1  # not retried: it would diverge again
    assert failed["error"].startswith("training diverged: outer iteration 0:") and "not finite" in failed["error"]
    assert succeeded["status"] == "succeeded", succeeded["error"]
    assert worker_pid(settings, bad) == worker_pid(settings, good) == worker.pid
