"""Load: 50 concurrent clients, each with its own API key, for 60 s on the job status and list
endpoints of the API process (``nerfsim serve --workers 0``): no errors; latency percentiles
printed (``NERFSIM_LOAD_SECONDS`` shortens the run)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict

import httpx
import pytest
import redis

from benchmarks.scale import ApiServer, small_job, upload_inputs
from benchmarks.service import percentile_ms
from nerfsim_client import Client
from service.keys import KeyStore
from service.settings import ServiceSettings
from service.storage import Storage

pytestmark = pytest.mark.slow

CLIENTS = 50
SECONDS = float(os.environ.get("NERFSIM_LOAD_SECONDS", 60))
JOBS = 20


async def run_clients(base_url: str, keys: list[str], job_ids: list[str], seconds: float) -> dict:
    """Each client sends one request after another until ``seconds`` have passed: a job's
    status half the time, else a list of jobs, assets or targets. Returns the latencies by
    endpoint, the errors and each client's request count."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    per_client = [0] * len(keys)
    endpoints = ["status"] * 3 + ["GET /v1/jobs", "GET /v1/jobs", "GET /v1/assets", "GET /v1/targets"]

    async def client_loop(index: int, key: str, deadline: float) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            while time.monotonic() < deadline:
                endpoint = rng.choice(endpoints)
                path = f"/v1/jobs/{rng.choice(job_ids)}" if endpoint == "status" else endpoint.split()[1]
                start = time.perf_counter()
                try:
                    response = await http.get(path, params=None if endpoint == "status" else {"limit": 50})
                except httpx.HTTPError as error:
                    errors.append(f"{path}: {type(error).__name__}: {error}")
                    continue
                latencies["GET /v1/jobs/{id}" if endpoint == "status" else endpoint].append(time.perf_counter() - start)
                per_client[index] += 1
                if response.status_code != 200:
                    errors.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")

    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(i, key, deadline) for i, key in enumerate(keys)))
    return {"latencies": latencies, "errors": errors, "per_client": per_client}


def test_fifty_clients_for_a_minute_on_status_and_lists_without_errors(
        settings: ServiceSettings, small_inputs, tmp_path, record_property) -> None:
    # A limit far above what a client reaches here: the limiter runs, as in production.
    settings = settings.model_copy(update={"rate_limit_per_s": 1000.0, "rate_limit_burst": 1000})
    keys_store = KeyStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    tenant = f"load-{os.getpid()}-{int(time.time())}"
    keys = [keys_store.create(tenant, f"client {i}")[0] for i in range(CLIENTS)]
    with ApiServer(settings, tmp_path / "api.log") as api:
        client = Client(api.url, keys[0], progress=False)
        inputs = upload_inputs(client, small_inputs)
        job_ids = [client.create_job(small_job(*inputs, seed=seed)).id for seed in range(JOBS)]
        result = asyncio.run(run_clients(api.url, keys, job_ids, SECONDS))

    latencies = result["latencies"]
    every = [value for values in latencies.values() for value in values]
    lines = [f"{CLIENTS} clients, {SECONDS:.0f} s: {len(every)} requests ({len(every) / SECONDS:.0f}/s), "
             f"{len(result['errors'])} errors, p50 {percentile_ms(every, 50):.1f} ms, p99 {percentile_ms(every, 99):.1f} ms "
             f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"]
    for endpoint, values in sorted(latencies.items()):
        lines.append(f"  {endpoint:<18} {len(values):6d} requests  p50 {percentile_ms(values, 50):7.1f} ms  "
                     f"p99 {percentile_ms(values, 99):7.1f} ms")
    print("\n" + "\n".join(lines) + f"\nload_p99_ms={percentile_ms(every, 99):.1f}")
    record_property("load_p99_ms", round(percentile_ms(every, 99), 1))
    record_property("load_requests", len(every))

    assert not result["errors"], result["errors"][:10]
    assert set(latencies) == {"GET /v1/jobs/{id}", "GET /v1/jobs", "GET /v1/assets", "GET /v1/targets"}
    # Every client was served all along, none starved.
    assert min(result["per_client"]) >= SECONDS / 6, result["per_client"]
    assert percentile_ms(every, 99) < 10_000
