"""Service latency and throughput: job-status requests from 50 concurrent clients and job
creation (enqueue) throughput of the nerfsim API, beside a bare FastAPI app in the same run.

Both apps run under uvicorn (one process each) on the loopback interface; the bare app answers
a GET with a small JSON document and a POST by echoing a JSON body, which is the floor any
FastAPI service pays (HTTP, routing, JSON). The nerfsim numbers add API-key checks, Redis
reads, record validation and, for job creation, reference checks, the record files and the RQ
enqueue. Redis is a fresh embedded server unless REDIS_URL is set. No worker runs: created jobs
stay queued.

    python benchmarks/service.py [--quick] [--clients 50]

Last line: ``status_p99_ms=<x>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BARE_APP = '''
from fastapi import FastAPI
app = FastAPI()
STATUS = {"id": "job-0123456789abcdef", "status": "queued", "attempts": 0, "progress": None, "history": []}

@app.get("/status")
def status() -> dict:
    return STATUS

@app.post("/jobs", status_code=201)
def create(body: dict) -> dict:
    return {**STATUS, "request": body}
'''


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: not ready after {timeout_s} s")


def start_uvicorn(target: str, port: int, env: dict, cwd: Path, factory: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"] + (["--factory"] if factory else [])
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """A ready nerfsim asset (an untrained field: no rendering happens here) and a 4-image COCO
    set of its class, zipped."""
    from dataclasses import asdict

    import torch
    from PIL import Image

    from renderer.object_field import ObjectAssetMeta, ObjectField, ObjectFieldConfig
    from renderer.train_object import save_object_asset
    from service.archives import zip_folder

    config = ObjectFieldConfig(plane_resolutions=(8,), plane_components=4, hidden_dim=8, occupancy_resolution=8)
    field = ObjectField(config, torch.tensor([[-0.05] * 3, [0.05] * 3]))
    save_object_asset(field, ObjectAssetMeta(name="thing", aabb=field.aabb.tolist(), model=asdict(config)),
                      folder / "asset" / "thing")
    target = folder / "target"
    (target / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(target / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"images/{i}.png", "width": 32, "height": 32})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 12, 12], "area": 144, "iscrowd": 0})
    (target / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                         "categories": [{"id": 1, "name": "thing"}]}))
    return zip_folder(folder / "asset", folder / "asset.zip"), zip_folder(target, folder / "target.zip")


async def hammer(url: str, clients: int, requests_per_client: int, method: str = "GET", headers: dict | None = None,
                 body_of=None) -> tuple[list[float], float, int]:
    """``clients`` concurrent keep-alive clients, each connected and warmed up by one request,
    then sending ``requests_per_client`` requests one after another: latencies (s), wall time
    of the measured part (s), error count."""
    latencies: list[float] = []
    errors = 0
    warmed = asyncio.Barrier(clients + 1)
    go = asyncio.Event()

    async def send(client: httpx.AsyncClient, index: int, n: int) -> httpx.Response:
        if method == "GET":
            return await client.get(url)
        return await client.post(url, json=body_of(index, n))

    async def client_loop(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            await send(client, index, -1)
            await warmed.wait()
            await go.wait()
            for n in range(requests_per_client):
                start = time.perf_counter()
                response = await send(client, index, n)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code >= 400

    tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    await warmed.wait()
    start = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - start, errors


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (well under 2 minutes)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--status-requests", type=int, help="status requests per client")
    parser.add_argument("--create-requests", type=int, help="job creations per client")
    args = parser.parse_args()
    status_n = args.status_requests or (20 if args.quick else 100)
    create_n = args.create_requests or (4 if args.quick else 20)

    import redis
    from rq import Queue

    from service.keys import KeyStore
    from service.redis_server import RedisServer, free_port
    from service.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="nerfsim-bench-"))
    server = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        server = RedisServer(work / "redis").start()
        redis_url = server.url
    env = {**os.environ, "REDIS_URL": redis_url, "NERFSIM_STORAGE_ROOT": str(work / "storage"),
           "NERFSIM_QUEUE_NAME": "bench", "NERFSIM_LOG_JSON": "true", "OMP_NUM_THREADS": "1",
           # 50 clients share one key here: the per-key rate limit would answer 429s.
           "NERFSIM_RATE_LIMIT_PER_S": "0", "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "client")))}
    (work / "bare_app.py").write_text(BARE_APP)
    nerfsim_port, bare_port = free_port(), free_port()
    processes = [
        start_uvicorn("service.api.main:create_app", nerfsim_port, env, REPO, factory=True),
        start_uvicorn("bare_app:app", bare_port, {**env, "PYTHONPATH": str(work)}, work),
    ]
    try:
        nerfsim, bare = f"http://127.0.0.1:{nerfsim_port}", f"http://127.0.0.1:{bare_port}"
        wait_ready(f"{nerfsim}/healthz", processes[0])
        wait_ready(f"{bare}/status", processes[1])
        key, _ = KeyStore(redis.Redis.from_url(redis_url), Storage(work / "storage")).create("bench")
        headers = {"Authorization": f"Bearer {key}"}
        asset_zip, target_zip = make_inputs(work / "inputs")
        with open(asset_zip, "rb") as handle:
            asset = httpx.post(f"{nerfsim}/v1/assets", headers=headers, files={"file": ("a.zip", handle)},
                               data={"name": "thing", "kind": "nerfsim"}, timeout=60).json()
        with open(target_zip, "rb") as handle:
            target = httpx.post(f"{nerfsim}/v1/targets", headers=headers, files={"file": ("t.zip", handle)},
                                data={"name": "real", "format": "coco"}, timeout=60).json()
        job_request = {"scene": {"assets": [asset["id"]]}, "targets": {"val": target["id"]}, "detector": {"image_size": 32}}
        job = httpx.post(f"{nerfsim}/v1/jobs", headers=headers, json=job_request, timeout=60).json()

        def run(url, n, **kwargs):
            return asyncio.run(hammer(url, args.clients, n, **kwargs))

        print(f"{args.clients} concurrent clients; {status_n} status and {create_n} create requests each "
              f"(Redis {'external' if server is None else 'embedded'})")
        rows = {}
        for name, url, kwargs in [
            ("bare GET", f"{bare}/status", {}),
            ("nerfsim GET /v1/jobs/{id}", f"{nerfsim}/v1/jobs/{job['id']}", {"headers": headers}),
        ]:
            latencies, wall, errors = run(url, status_n, **kwargs)
            rows[name] = (latencies, wall, errors)
            print(f"  {name:<28} p50 {percentile_ms(latencies, 50):7.2f} ms  p99 {percentile_ms(latencies, 99):7.2f} ms"
                  f"  {len(latencies) / wall:8.1f} req/s  errors {errors}")
        creates = {}
        for name, url, kwargs in [
            ("bare POST", f"{bare}/jobs", {"method": "POST", "body_of": lambda i, n: {**job_request, "seed": n}}),
            ("nerfsim POST /v1/jobs", f"{nerfsim}/v1/jobs",
             {"method": "POST", "headers": headers, "body_of": lambda i, n: {**job_request, "seed": 1000 * i + n}}),
        ]:
            latencies, wall, errors = run(url, create_n, **kwargs)
            creates[name] = len(latencies) / wall
            print(f"  {name:<28} p50 {percentile_ms(latencies, 50):7.2f} ms  p99 {percentile_ms(latencies, 99):7.2f} ms"
                  f"  {len(latencies) / wall:8.1f} req/s  errors {errors}")
        queue = Queue("bench", connection=redis.Redis.from_url(redis_url))
        start = time.perf_counter()
        count = 200 if args.quick else 1000
        for i in range(count):
            queue.enqueue("service.tasks.run_job", "bench", f"job-x{i}", job_id=f"bare-{i}")
        raw_rate = count / (time.perf_counter() - start)
        print(f"  {'RQ enqueue (one client)':<28} {raw_rate:8.1f} jobs/s")

        status_p50 = percentile_ms(rows["nerfsim GET /v1/jobs/{id}"][0], 50)
        status_p99 = percentile_ms(rows["nerfsim GET /v1/jobs/{id}"][0], 99)
        bare_p50, bare_p99 = percentile_ms(rows["bare GET"][0], 50), percentile_ms(rows["bare GET"][0], 99)
        print(f"job status vs bare FastAPI: p50 x{status_p50 / bare_p50:.2f}, p99 x{status_p99 / bare_p99:.2f}")
        print(f"enqueue throughput: {creates['nerfsim POST /v1/jobs']:.1f} jobs/s "
              f"(x{creates['nerfsim POST /v1/jobs'] / creates['bare POST']:.2f} of the bare POST's "
              f"{creates['bare POST']:.1f} req/s)")
        print(f"status_p50_ms={status_p50:.2f}")
        print(f"status_p99_ms={status_p99:.2f}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
