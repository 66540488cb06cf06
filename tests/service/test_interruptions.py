"""Interruptions of real worker processes: kills with progress in between do not use up the
job's retries, a graceful stop (SIGTERM) re-queues the running job at once without counting,
and a job cancelled during its final training stops inside it and keeps what it produced."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis
from rq.job import Job

from tests.service.conftest import wait_for
from tests.service.jobs import read_events, setup_job_inputs, tiny_job

pytestmark = pytest.mark.slow


def job_state(client, job_id: str, headers: dict) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=headers).json()


def ended(client, job_id: str, headers: dict):
    return lambda: (s := job_state(client, job_id, headers))["status"] in ("succeeded", "failed", "cancelled") and s


def test_three_kills_with_progress_in_between_still_succeed(client, make_key, workers, settings, asset_zip: Path,
                                                           coco_zip: Path) -> None:
    assert settings.job_retries == 2
    headers = make_key("kills")
    request = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip))
    request["budget"] = {**request["budget"], "outer_iterations": 6}
    job_id = client.post("/v1/jobs", headers=headers, json=request).json()["id"]
    for kill in range(3):
        worker = workers.start()
        # Each attempt gets one more outer iteration done (and checkpointed), then dies.
        wait_for(lambda: len(job_state(client, job_id, headers)["history"]) > kill, 180, f"iteration {kill + 1}")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    workers.start()  # finds the abandoned attempt, and resumes the job

    final = wait_for(ended(client, job_id, headers), 300, "the job to end")
    assert final["status"] == "succeeded", (final["error"], workers.logs()[-3000:])
    assert final["attempts"] == 4 and final["error"] is None
    attempts = final["attempt_history"]
    assert [(a["outcome"], a["counted"]) for a in attempts] == [("interrupted", False)] * 3 + [("succeeded", False)]
    assert all(a["reason"].startswith(f"the worker stopped responding (killed, or out of memory) during attempt {n}")
               for n, a in enumerate(attempts[:3], start=1)), attempts
    assert [a["resumed_from"] for a in attempts] == [0] + [a["reached"] for a in attempts[:3]]
    iterations = [h["iteration"] for h in final["history"]]
    assert iterations == list(range(6)) and all(type(i) is int for i in iterations)


def test_a_graceful_stop_requeues_the_running_job_at_once_without_counting(client, make_key, workers, settings,
                                                                           asset_zip: Path, coco_zip: Path) -> None:
    headers = make_key("sigterm")
    request = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip))
    request["budget"] = {**request["budget"], "outer_iterations": 40}
    job_id = client.post("/v1/jobs", headers=headers, json=request).json()["id"]
    worker = workers.start()
    wait_for(lambda: job_state(client, job_id, headers)["progress"], 180, "the job to start its loop")
    worker.send_signal(signal.SIGTERM)
    # The worker does not wait for the job's 40 iterations: it hands the job back and exits.
    assert worker.wait(120) == 0, workers.logs()[-3000:]
    record = job_state(client, job_id, headers)
    assert record["status"] == "queued" and record["error"] is None, record
    (attempt,) = record["attempt_history"]
    assert attempt["outcome"] == "interrupted" and not attempt["counted"]
    assert attempt["reason"].startswith("the worker was shut down during attempt 1"), attempt
    assert len(record["history"]) < 40
    rq_job = Job.fetch(job_id, connection=redis.Redis.from_url(settings.redis_url))
    assert rq_job.get_status() == "queued" and rq_job.retries_left == settings.job_retries

    # Another worker resumes it; cancelling it now stops it within its current step.
    workers.start()
    wait_for(lambda: job_state(client, job_id, headers)["attempts"] == 2, 180, "the second attempt")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 202
    final = wait_for(ended(client, job_id, headers), 120, "the job to stop")
    assert final["status"] == "cancelled" and final["attempts"] == 2, final["error"]
    assert [a["outcome"] for a in final["attempt_history"]] == ["interrupted", "cancelled"]


def test_a_job_cancelled_during_its_final_training_stops_inside_it_and_keeps_what_it_made(
        client, make_key, workers, settings, asset_zip: Path, coco_zip: Path) -> None:
    headers = make_key("final")
    request = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip))
    # One long epoch (128 batches of 2 images): the old check, at the end of an epoch, comes late.
    request["budget"] = {**request["budget"], "outer_iterations": 1, "final_images": 256, "final_epochs": 1}
    request["final"] = {**request["final"], "batch_size": 2}
    job_id = client.post("/v1/jobs", headers=headers, json=request).json()["id"]
    workers.start()
    started = lambda: next(settings.storage_root.rglob(f"jobs/{job_id}/work/final_train/initial.pt"), None)  # noqa: E731
    wait_for(started, 300, "the final training to start", every_s=0.05)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 202
    final = wait_for(ended(client, job_id, headers), 120, "the job to stop")
    assert final["status"] == "cancelled", (final["error"], workers.logs()[-3000:])
    # It stopped inside the epoch: no epoch was reported, no detector was trained to the end.
    events = read_events(client, job_id, headers)
    stages = [e["data"]["stage"] for e in events if e["event"] == "progress"]
    assert "final-render" in stages and "final-train" not in stages and "evaluate" not in stages, stages
    assert "detector.pt" not in final["artifacts"]
    # What it made is kept: the iteration's history, the final dataset and the samples.
    assert len(final["history"]) == 1 and {"dataset.zip", "samples.zip"} <= set(final["artifacts"]), final["artifacts"]
    assert final["attempt_history"][-1]["outcome"] == "cancelled"


def test_an_asset_build_is_cancelled_before_it_starts_or_while_it_trains(client, make_key, workers, settings,
                                                                         box_views: Path, tmp_path: Path) -> None:
    from service.archives import zip_folder
    from tests.service.jobs import upload
    from tests.service.test_worker_jobs import TINY_BUILD

    headers = make_key("builds")
    archive = zip_folder(box_views, tmp_path / "views.zip")
    long_build = json.dumps({**TINY_BUILD, "train_steps": 100_000, "train_minutes": 600})
    waiting, training = (upload(client, "/v1/assets", headers, archive, name=name, kind="posed-images", build=long_build)
                         for name in ("waiting", "training"))
    # Not started yet (no worker): it fails at once.
    answer = client.post(f"/v1/assets/{waiting['id']}/cancel", headers=headers)
    assert answer.status_code == 202 and answer.json()["status"] == "failed"
    assert answer.json()["error"] == "the build was cancelled"
    assert client.post(f"/v1/assets/{waiting['id']}/cancel", headers=headers).status_code == 409

    workers.start()
    connection = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: Job.fetch(training["id"], connection=connection).get_status() == "started", 180, "the build")
    assert client.post(f"/v1/assets/{training['id']}/cancel", headers=headers).status_code == 202
    # 100,000 steps or 10 hours of training, stopped within its first minute.
    built = wait_for(lambda: (a := client.get(f"/v1/assets/{training['id']}", headers=headers).json())["status"]
                     != "building" and a, 60, "the build to stop")
    assert (built["status"], built["error"]) == ("failed", "the build was cancelled")
    assert client.delete(f"/v1/assets/{training['id']}", headers=headers).status_code == 204


def test_a_cancelled_job_may_stop_by_itself_before_it_is_interrupted() -> None:
    """The loop's own checks stop a job cleanly at a point of its choosing; only a job still
    running GRACE_S after the flag is interrupted wherever it is."""
    import time

    from service.interruption import GRACE_S, JobCancelled, interruptible

    flag = {"set": False}
    began = time.monotonic()
    with interruptible(lambda: flag["set"]):  # stops by itself within the grace: not interrupted
        flag["set"] = True
        while time.monotonic() - began < GRACE_S / 2:
            time.sleep(0.02)
    flag["set"], began = False, time.monotonic()
    with pytest.raises(JobCancelled):
        with interruptible(lambda: flag["set"]):
            flag["set"] = True
            while time.monotonic() - began < 10 * GRACE_S:
                time.sleep(0.02)
    assert GRACE_S <= time.monotonic() - began < 10 * GRACE_S  # after the grace, not at the end of the body
