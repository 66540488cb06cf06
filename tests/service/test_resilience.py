"""Failures: a worker killed with SIGKILL mid-job (the job is retried and resumes from its last
checkpoint), and restarts of the API and of Redis - with its data, or without it - that lose no
accepted job or record."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.redis_server import RedisServer
from tests.service.conftest import WorkerProcesses, wait_for
from tests.service.jobs import read_events, setup_job_inputs, tiny_job

pytestmark = pytest.mark.slow


def job_state(client: TestClient, job_id: str, headers: dict) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=headers).json()


def test_a_killed_worker_is_replaced_and_the_job_resumes(client, make_key, workers, asset_zip: Path,
                                                         coco_zip: Path) -> None:
    headers = make_key("acme")
    asset_id, target_id = setup_job_inputs(client, headers, asset_zip, coco_zip)
    request = tiny_job(asset_id, target_id)
    request["budget"] = {**request["budget"], "outer_iterations": 4}
    job = client.post("/v1/jobs", headers=headers, json=request).json()
    first = workers.start()
    # Kill it once two outer iterations are done (and checkpointed).
    wait_for(lambda: len(job_state(client, job["id"], headers)["history"]) >= 2, 120, "two outer iterations")
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before_kill = len(job_state(client, job["id"], headers)["history"])
    workers.start()

    final = wait_for(lambda: (s := job_state(client, job["id"], headers))["status"] in ("succeeded", "failed") and s,
                     180, "the retried job to finish")
    assert final["status"] == "succeeded", (final["error"], workers.logs()[-3000:])
    assert final["attempts"] == 2
    assert [h["iteration"] for h in final["history"]] == [0, 1, 2, 3]

    events = read_events(client, job["id"], headers)
    statuses = [(e["data"]["status"], e["data"].get("attempt")) for e in events if e["event"] == "status"]
    assert statuses == [("queued", None), ("running", 1), ("queued", None), ("running", 2), ("succeeded", None)]
    retry = next(e for e in events if e["event"] == "status" and e["data"].get("retry"))
    # It names the cause; the attempt had checkpointed progress, so it used up no retry.
    assert retry["data"]["reason"].startswith("the worker stopped responding (killed, or out of memory) during attempt 1")
    assert retry["data"]["counted"] is False
    second_start = next(i for i, e in enumerate(events) if e["event"] == "status" and e["data"].get("attempt") == 2)
    resumed = [e["data"]["iteration"] for e in events[second_start:]
               if e["event"] == "progress" and e["data"]["stage"] == "outer"]
    # The second attempt starts where the checkpoint left off (every reported iteration was
    # checkpointed first), not at iteration 0.
    assert resumed[0] in (done_before_kill, done_before_kill + 1) and resumed[0] >= 2, (resumed, done_before_kill)


def test_restarts_of_the_api_and_of_redis_lose_nothing(settings, asset_zip: Path, coco_zip: Path,
                                                       tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    settings = settings.model_copy(update={"redis_url": server.url})
    try:
        with TestClient(create_app(settings)) as client:
            key_headers = _key(client)
            asset_id, target_id = setup_job_inputs(client, key_headers, asset_zip, coco_zip)
            accepted = client.post("/v1/jobs", headers=key_headers, json=tiny_job(asset_id, target_id)).json()

        # Redis restarts (clean shutdown, persistence on) and so does the API.
        server.stop()
        server = RedisServer(tmp_path / "redis", port=server.port).start()
        with TestClient(create_app(settings)) as client:
            assert job_state(client, accepted["id"], key_headers)["status"] == "queued"
            assert client.get("/v1/assets", headers=key_headers).json()["count"] == 1
            assert client.get(f"/v1/targets/{target_id}", headers=key_headers).status_code == 200

        # Redis comes back empty (its disk was lost): the API's startup restores the records,
        # the keys and the idempotency keys from their files, and enqueues the job again.
        redis.Redis.from_url(server.url).flushall()
        with TestClient(create_app(settings)) as client:
            restored = job_state(client, accepted["id"], key_headers)
            assert restored["status"] == "queued" and restored["id"] == accepted["id"]
            assert client.get("/v1/targets", headers=key_headers).json()["count"] == 1

            workers = WorkerProcesses(settings, tmp_path)
            workers.start()
            try:
                wait_for(lambda: job_state(client, accepted["id"], key_headers)["progress"], 120, "the job to start")
                # Redis restarts while the job runs.
                server.stop()
                server = RedisServer(tmp_path / "redis", port=server.port).start()
                final = wait_for(lambda: (s := job_state(client, accepted["id"], key_headers))["status"]
                                 in ("succeeded", "failed") and s, 180, "the job to finish")
            finally:
                workers.stop()
            assert final["status"] == "succeeded", (final["error"], workers.logs()[-3000:])
            assert {"dataset.zip", "report.json"} <= set(final["artifacts"])
    finally:
        server.stop()


def _key(client: TestClient) -> dict:
    key, _ = client.app.state.keys.create("restarts")
    return {"Authorization": f"Bearer {key}"}
