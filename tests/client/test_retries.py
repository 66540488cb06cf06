"""Retries seen from a real local HTTP server that answers with a script of statuses:
``Retry-After`` honoured, exponential backoff with jitter, typed errors once the retries are
spent, uploads repeated only when the service refused them outright, one idempotency key
across the attempts of a job creation, and connection failures - for both clients."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from itertools import pairwise
from pathlib import Path

import pytest

from nerfsim_client import (
    APIConnectionError,
    AsyncClient,
    Client,
    RateLimitError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
)
from tests.client.servers import Answer, ScriptedServer

KEY = "nsk_0123456789ab_secret"
JOB = {"id": "job-1", "status": "queued"}


def call(asynchronous: bool, url: str, retry: RetryPolicy, action):
    """``action(client)`` with a sync or an async client (its awaitable awaited)."""
    if not asynchronous:
        with Client(url, KEY, retry=retry, progress=False) as client:
            return action(client)

    async def run():
        async with AsyncClient(url, KEY, retry=retry, progress=False) as client:
            return await action(client)

    return asyncio.run(run())


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request) -> bool:
    return request.param


def test_retry_after_then_backoff_with_jitter(asynchronous: bool) -> None:
    answers = [Answer(429, {"detail": "slow down"}, {"Retry-After": "1"}),
               Answer(503, {"detail": "the job store is unreachable"}), Answer(200, JOB)]
    with ScriptedServer(answers) as server:
        job = call(asynchronous, server.url, RetryPolicy(backoff_base_s=0.2, rng=random.Random(0)),
                   lambda client: client.get_job("job-1"))
    assert job.id == "job-1" and len(server.seen) == 3
    waits = [b.at - a.at for a, b in pairwise(server.seen)]
    assert 1.0 <= waits[0] < 1.5  # Retry-After: 1
    assert 0.2 <= waits[1] < 0.4 + 0.3  # second retry: uniform in [0.2, 0.4] s
    assert all(s.headers["authorization"] == f"Bearer {KEY}" for s in server.seen)


def test_spent_retries_raise_typed_errors(asynchronous: bool) -> None:
    policy = RetryPolicy(max_retries=2, backoff_base_s=0.01)
    with ScriptedServer([Answer(429, {"detail": "quota"}, {"Retry-After": "0"})]) as server:
        with pytest.raises(RateLimitError, match="HTTP 429 .*quota") as caught:
            call(asynchronous, server.url, policy, lambda client: client.get_job("job-1"))
    assert caught.value.retry_after == 0 and len(server.seen) == 3
    with ScriptedServer([Answer(500, {"detail": "boom"})]) as server:
        with pytest.raises(ServerError, match="boom"):
            call(asynchronous, server.url, policy, lambda client: client.list_jobs())
    assert len(server.seen) == 3


def test_uploads_are_repeated_only_when_refused_outright(asynchronous: bool, tmp_path: Path) -> None:
    archive = tmp_path / "set.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))
    target = {"id": "target-1", "name": "real", "role": "validation", "format": "coco", "num_images": 3,
              "class_names": ["box"]}
    policy = RetryPolicy(backoff_base_s=0.01)
    with ScriptedServer([Answer(500, {"detail": "half done?"})]) as server:
        with pytest.raises(ServerError):
            call(asynchronous, server.url, policy, lambda client: client.upload_target(archive, "real"))
    assert len(server.seen) == 1  # a 500 may have stored it: not repeated
    with ScriptedServer([Answer(503, {"detail": "busy"}), Answer(201, target)]) as server:
        uploaded = call(asynchronous, server.url, policy, lambda client: client.upload_target(archive, "real"))
    assert uploaded.id == "target-1" and [s.method for s in server.seen] == ["POST", "POST"]


def test_job_creation_keeps_its_idempotency_key_across_attempts(asynchronous: bool) -> None:
    with ScriptedServer([Answer(502, {"detail": "bad gateway"}), Answer(500, {}), Answer(201, JOB)]) as server:
        call(asynchronous, server.url, RetryPolicy(backoff_base_s=0.01),
             lambda client: client.create_job({"scene": {"assets": ["asset-1"]}, "targets": {"val": "target-1"}}))
    keys = {s.headers["idempotency-key"] for s in server.seen}
    assert len(server.seen) == 3 and len(keys) == 1 and keys.pop().startswith("sdk-")


def test_connection_failures_are_retried_then_raised(asynchronous: bool) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(APIConnectionError, match="ConnectError"):
            call(asynchronous, url, RetryPolicy(max_retries=2, backoff_base_s=0.1), lambda client: client.get_job("j"))
    assert time.monotonic() - began >= 0.05 + 0.1  # the two backoffs' lower bounds


def test_backoff_grows_to_its_cap_and_retry_after_is_capped() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=4.0, retry_after_max_s=60, rng=random.Random(3))
    for attempt, top in enumerate([1, 2, 4, 4, 4]):
        waits = [policy.delay(attempt) for _ in range(200)]
        assert top / 2 <= min(waits) and max(waits) <= top and max(waits) - min(waits) > top / 4
    assert policy.delay(0, retry_after=7) == 7 and policy.delay(5, retry_after=3600) == 60
    assert issubclass(ServiceUnavailableError, ServerError)
