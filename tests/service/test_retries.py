"""Retries count failures, not interruptions; the error names the cause; a failed or cancelled
job can be retried through the API. Attempts end here as RQ ends them (its failure callback,
then its retry), on the job RQ really holds in Redis; the kills of real workers are in
test_interruptions.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from rq.exceptions import AbandonedJobError
from rq import Queue
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException

from service import task_common, tasks
from service.attempts import start_attempt
from service.events import cancel_key, decode, events_key
from service.interruption import WorkerStopping
from service.queue import get_queue
from service.records import RecordStore, record_key
from service.job_schemas import JobRecord
from service.storage import Storage
from tests.service.jobs import read_events, setup_job_inputs, tiny_job


@pytest.fixture
def job(client, make_key, settings, asset_zip: Path, coco_zip: Path, monkeypatch):
    """A queued tiny job (RQ holds it with job_retries=2 retries), its API headers, its store
    and tenant, and the request that created it."""
    monkeypatch.setattr(task_common, "get_settings", lambda: settings)  # the worker's settings: the test's
    headers = make_key("retries")
    request = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip))
    job_id = client.post("/v1/jobs", headers=headers, json=request).json()["id"]
    connection = redis.Redis.from_url(settings.redis_url)
    tenant = json.loads(connection.get(record_key("job", job_id)))["tenant"]
    store = RecordStore(connection, Storage(settings.storage_root))
    return job_id, headers, store, tenant, request


def run_attempt(store: RecordStore, tenant: str, job_id: str, iterations: int, stage: str = "outer") -> None:
    """A worker takes the job off the queue and starts an attempt (as run_job does), which
    reports ``iterations`` outer iterations done and ``stage``."""
    rq_job = Job.fetch(job_id, connection=store.redis)
    Queue(rq_job.origin, connection=store.redis).remove(job_id)
    rq_job.set_status(JobStatus.STARTED)

    def start(record: JobRecord) -> None:
        record.status = "running"
        start_attempt(record)
        done = len(record.history)
        record.history += [{"iteration": t, "val_loss": 1.0} for t in range(done, done + iterations)]
        record.progress = {"stage": stage}

    store.update(JobRecord, tenant, job_id, start)


def end_attempt(store: RecordStore, settings, job_id: str, error: BaseException) -> Job:
    """What RQ does when an attempt ends with ``error``: its failure callback, then a retry
    if the job has retries left (else it stays failed)."""
    rq_job = Job.fetch(job_id, connection=store.redis)
    tasks.on_failure(rq_job, store.redis, type(error), error, None)
    if rq_job.retries_left:
        with store.redis.pipeline() as pipeline:
            rq_job.retry(get_queue(store.redis, settings), pipeline)
            pipeline.execute()
    else:
        rq_job.set_status(JobStatus.FAILED)
    return Job.fetch(job_id, connection=store.redis)


def test_attempts_without_progress_use_up_the_retries_and_the_error_names_the_cause(client, settings, job) -> None:
    job_id, headers, store, tenant, request = job
    for attempt in (1, 2):
        run_attempt(store, tenant, job_id, iterations=1 if attempt == 1 else 0)
        rq_job = end_attempt(store, settings, job_id, AbandonedJobError())
        record = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        # While it waits to run again it says so, without an old error.
        assert record["status"] == "queued" and record["error"] is None, record
        assert rq_job.get_status() == JobStatus.QUEUED
    # The first attempt got one iteration done: it kept its retry; the second did not.
    assert rq_job.retries_left == 1
    for attempt in (3, 4):
        run_attempt(store, tenant, job_id, iterations=0)
        rq_job = end_attempt(store, settings, job_id, AbandonedJobError())
    record = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert record["status"] == "failed" and record["attempts"] == 4
    assert record["error"] == ("the worker stopped responding (killed, or out of memory) during attempt 4 "
                               "(resumed from outer iteration 1, outer iteration 1 of 2 done); "
                               "no retries left (job_retries=2)")
    history = record["attempt_history"]
    assert [(a["number"], a["outcome"], a["counted"], a["resumed_from"], a["reached"]) for a in history] == [
        (1, "interrupted", False, 0, 1), (2, "interrupted", True, 1, 1), (3, "interrupted", True, 1, 1),
        (4, "failed", True, 1, 1)]
    assert history[0]["reason"] == ("the worker stopped responding (killed, or out of memory) during attempt 1 "
                                    "(outer iteration 1 of 2 done)")
    events = read_events(client, job_id, headers)
    retries = [e["data"] for e in events if e["event"] == "status" and e["data"].get("retry")]
    assert [r["counted"] for r in retries] == [False, True, True]
    assert retries[1]["reason"].startswith("the worker stopped responding (killed, or out of memory) during attempt 2")


def test_shutdowns_never_count_timeouts_always_do_and_a_later_stage_is_progress(client, settings, job) -> None:
    job_id, headers, store, tenant, request = job
    for _ in range(4):  # more worker shutdowns than retries, none with progress
        run_attempt(store, tenant, job_id, iterations=0, stage="setup")
        rq_job = end_attempt(store, settings, job_id, WorkerStopping())
    assert rq_job.retries_left == 2 and rq_job.get_status() == JobStatus.QUEUED
    # The first outer iterations are done, and a later attempt reaches the final stage: progress.
    run_attempt(store, tenant, job_id, iterations=2, stage="outer")
    end_attempt(store, settings, job_id, AbandonedJobError())
    run_attempt(store, tenant, job_id, iterations=0, stage="final-train")
    rq_job = end_attempt(store, settings, job_id, AbandonedJobError())
    assert rq_job.retries_left == 2
    # The same point again is no progress; a timeout counts even with progress.
    run_attempt(store, tenant, job_id, iterations=0, stage="final-train")
    end_attempt(store, settings, job_id, AbandonedJobError())
    run_attempt(store, tenant, job_id, iterations=0, stage="report")
    rq_job = end_attempt(store, settings, job_id, JobTimeoutException("too long"))
    assert rq_job.retries_left == 0
    record = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert record["status"] == "queued"
    assert [a["counted"] for a in record["attempt_history"]] == [False] * 6 + [True, True]
    assert record["attempt_history"][0]["reason"] == "the worker was shut down during attempt 1 (outer iteration 0 of 2 done)"
    assert record["attempt_history"][-1]["reason"].startswith(
        f"the attempt ran past the job time limit ({settings.job_timeout_s} s) during attempt 8")


def test_a_failed_or_cancelled_job_can_be_retried_and_any_other_cannot(client, settings, job) -> None:
    job_id, headers, store, tenant, request = job
    answer = client.post(f"/v1/jobs/{job_id}/retry", headers=headers)
    assert answer.status_code == 409 and answer.json()["detail"] == (
        f"job {job_id} is queued; only a failed or cancelled job can be retried")
    for _ in range(3):
        run_attempt(store, tenant, job_id, iterations=0, stage="setup")
        end_attempt(store, settings, job_id, AbandonedJobError())
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] == "failed"

    answer = client.post(f"/v1/jobs/{job_id}/retry", headers=headers)
    assert answer.status_code == 202, answer.text
    record = answer.json()
    assert record["status"] == "queued" and record["error"] is None and record["finished_at"] is None
    rq_job = Job.fetch(job_id, connection=store.redis)
    assert rq_job.get_status() == JobStatus.QUEUED and rq_job.retries_left == settings.job_retries
    assert get_queue(store.redis, settings).job_ids == [job_id]
    # Its event stream starts over (a client following it does not stop at the old failure).
    assert [decode(fields) for _, fields in store.redis.xrange(events_key(job_id))] == [
        ("status", {"status": "queued", "retry": True})]
    assert client.post(f"/v1/jobs/{job_id}/retry", headers=headers).status_code == 409

    run_attempt(store, tenant, job_id, iterations=1)
    assert client.post(f"/v1/jobs/{job_id}/retry", headers=headers).json()["detail"].endswith("is running; only a "
                                                                                              "failed or cancelled job can be retried")
    store.update(JobRecord, tenant, job_id, lambda r: setattr(r, "status", "succeeded"))
    assert client.post(f"/v1/jobs/{job_id}/retry", headers=headers).status_code == 409

    # A cancelled job (here: cancelled while queued) runs again, its cancellation forgotten.
    other = client.post("/v1/jobs", headers=headers, json=request).json()
    assert client.post(f"/v1/jobs/{other['id']}/cancel", headers=headers).json()["status"] == "cancelled"
    answer = client.post(f"/v1/jobs/{other['id']}/retry", headers=headers)
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is False
    assert Job.fetch(other["id"], connection=store.redis).get_status() == JobStatus.QUEUED
    assert not store.redis.exists(cancel_key(other["id"]))



def test_a_job_whose_inputs_are_gone_is_not_retried(client, settings, job) -> None:
    job_id, headers, store, tenant, request = job
    for _ in range(3):
        run_attempt(store, tenant, job_id, iterations=0, stage="setup")
        end_attempt(store, settings, job_id, AbandonedJobError())
    asset = request["scene"]["assets"][0]
    assert client.delete(f"/v1/assets/{asset}", headers=headers).status_code == 204
    answer = client.post(f"/v1/jobs/{job_id}/retry", headers=headers)
    assert answer.status_code == 404 and asset in answer.json()["detail"], answer.text
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] == "failed"
    assert Job.fetch(job_id, connection=store.redis).get_status() == JobStatus.FAILED

def test_a_retry_reason_names_no_server_path(client, settings, job) -> None:
    job_id, headers, store, tenant, _ = job
    run_attempt(store, tenant, job_id, iterations=1)
    missing = store.storage.record_dir("asset", tenant, "asset-0000000000000000") / "object" / "field.pt"
    end_attempt(store, settings, job_id, FileNotFoundError(f"no such file: {missing}"))
    record = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    reason = record["attempt_history"][0]["reason"]
    assert str(settings.storage_root) not in json.dumps(record) and "tenants/" in reason, reason
    published = [decode(fields) for _, fields in store.redis.xrange(events_key(job_id))]  # the job waits: no stream end
    assert [data["reason"] for event, data in published if data.get("retry")] == [reason]
