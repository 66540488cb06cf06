"""Faults and exploits of a running deployment (issue 22): jobs lost to kills and restarts,
server errors found by a fuzzer, and a hostile tenant's known exploits, each blocked or not.

One API process (``nerfsim serve --workers 0``), worker processes (``nerfsim worker``) and
Redis, on 127.0.0.1 only, with ``job_retries=2`` and fast heartbeats (the service tests'
settings). Three parts, in this order:

1. Jobs. A kill/restart cycle: jobs running on their workers, the workers killed with SIGKILL,
   the API killed and restarted, new workers started; and one job interrupted three times
   (SIGKILL of its worker after each attempt checkpointed an outer iteration, a new worker
   each time). A job is lost when it does not end 'succeeded' with its metric history and its
   artifacts (dataset, psi, detector, report) downloadable.
2. Fuzz. Schemathesis over every operation of the live ``/openapi.json`` with a tenant's API
   key, valid and invalid data, bounded by examples per operation and a time cap; every
   answer >= 500 is counted and the worst are printed with a curl command to repeat them.
3. Exploits (:data:`EXPLOITS`), sent by another tenant while no worker runs (a job that one of
   them creates is cancelled while still queued; the one whose harm needs a worker gets one).
   An exploit is blocked only when the service refuses it as intended: the intended status,
   a JSON message naming the field or the upload, no job created, no file stored, and no
   marker file written by a planted pickle.

    python benchmarks/faults.py [--quick] [--keep]

``--quick`` (a few minutes on 2 cores) runs fewer fuzz examples and one job in the cycle.
Last line: ``fuzz_5xx=<n> exploits_blocked=<k>/<N> jobs_lost=<m>``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scale import ApiServer, WorkerGroup, make_upload_inputs, small_job, upload_inputs, wait_for_jobs  # noqa: E402
from nerfsim_client import Client  # noqa: E402
from service.keys import KeyStore  # noqa: E402
from service.redis_server import RedisServer  # noqa: E402
from service.schemas import TERMINAL_STATUSES  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from service.storage import Storage  # noqa: E402
from tests.service.conftest import FAST_HEARTBEATS, wait_for  # noqa: E402
from tests.service.test_archives import write_zip  # noqa: E402

ARTIFACTS = ("dataset.zip", "psi.json", "detector.pt", "report.json")
"""What a succeeded job must deliver."""
UPLOAD_REFUSED = {400, 413, 415, 422}
"""Refusals of a bad upload (404 and 405 mean the route is missing, not that it refused)."""
JOB_TIMEOUT_S = 900


@dataclass
class Tenant:
    name: str
    key: str
    client: Client
    http: httpx.Client
    """Plain HTTP with the tenant's key: the attacks send what the SDK would refuse to."""
    asset_id: str = ""
    target_id: str = ""

    def job_count(self) -> int:
        return self.http.get("/v1/jobs", params={"limit": 1}).json()["count"]


def clients(url: str, key: str) -> tuple[Client, httpx.Client]:
    """The SDK's client and a plain HTTP one, both with ``key``."""
    return Client(url, key, progress=False), httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                                          timeout=120.0)


@dataclass
class Bench:
    """The running deployment, its tenants and what the parts hand on to each other."""

    settings: ServiceSettings
    api: ApiServer
    workers: WorkerGroup
    work: Path
    inputs: tuple[Path, Path]
    """Zipped small asset and target (class ``thing``)."""
    tenants: list[Tenant] = field(default_factory=list)
    detector_pt: bytes | None = None
    """A detector a job of the owner delivered (legitimate weights for the owner to upload)."""

    def tenant(self, name: str, inputs: bool = True) -> Tenant:
        """A new tenant with an API key and, with ``inputs``, its own asset and target."""
        name = f"{name}-{uuid.uuid4().hex[:6]}"
        key, _ = KeyStore(redis.Redis.from_url(self.settings.redis_url), Storage(self.settings.storage_root)).create(name)
        tenant = Tenant(name, key, *clients(self.api.url, key))
        if inputs:
            tenant.asset_id, tenant.target_id = upload_inputs(tenant.client, self.inputs)
        self.tenants.append(tenant)
        return tenant

    def reconnect(self) -> None:
        """New clients after the API restarted (no stale keep-alive connections)."""
        for tenant in self.tenants:
            tenant.client.close()
            tenant.http.close()
            tenant.client, tenant.http = clients(self.api.url, tenant.key)

    def stored_files(self) -> set[Path]:
        return {p for p in self.settings.storage_root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# 1. jobs: kills and restarts


def why_lost(http: httpx.Client, record: dict) -> str | None:
    """Why a finished job counts as lost; None when it succeeded with all its results."""
    if record["status"] != "succeeded":
        return f"{record['status']} after {record['attempts']} attempt(s): {record['error']}"
    if len(record["history"]) != record["spec"]["budget"]["outer_iterations"]:
        return f"history has {len(record['history'])} of {record['spec']['budget']['outer_iterations']} iterations"
    for name in ARTIFACTS:
        response = http.get(f"/v1/jobs/{record['id']}/artifacts/{name}")
        if response.status_code != 200 or not response.content:
            return f"artifact {name}: {response.status_code}"
    return None


def kill_workers(bench: Bench) -> None:
    for worker in bench.workers.alive:
        worker.send_signal(signal.SIGKILL)
        worker.wait()


def kill_restart_cycle(bench: Bench, owner: Tenant, jobs: int, outer_iterations: int) -> list[dict]:
    """``jobs`` jobs, one per worker; once each has checkpointed an outer iteration, every
    worker and the API are killed (SIGKILL), the API restarted and new workers started."""
    bench.workers.start(jobs)
    ids = [owner.client.create_job(small_job(owner.asset_id, owner.target_id, seed=i,
                                             outer_iterations=outer_iterations)).id for i in range(jobs)]
    wait_for(lambda: all((r := owner.client.get_job(j).data)["history"] or r["status"] in TERMINAL_STATUSES for j in ids),
             JOB_TIMEOUT_S, "an outer iteration of every job")
    kill_workers(bench)
    bench.api.process.send_signal(signal.SIGKILL)
    bench.api.process.wait()
    bench.api.start()
    bench.reconnect()
    bench.workers.start(jobs)
    return wait_for_jobs(owner.client, ids, JOB_TIMEOUT_S)


def three_interruptions(bench: Bench, owner: Tenant, outer_iterations: int = 5) -> dict:
    """One job whose worker is killed three times, each time after the running attempt
    checkpointed one more outer iteration (with job_retries=2 it must still succeed)."""
    job = owner.client.create_job(small_job(owner.asset_id, owner.target_id, seed=100,
                                            outer_iterations=outer_iterations)).id
    bench.workers.start(1)
    done = 0

    def progressed() -> dict | None:
        record = owner.client.get_job(job).data
        return record if record["status"] in TERMINAL_STATUSES or len(record["history"]) > done else None

    for _ in range(3):
        record = wait_for(progressed, JOB_TIMEOUT_S, "a checkpointed outer iteration")
        if record["status"] in TERMINAL_STATUSES:
            break
        done = len(record["history"])
        kill_workers(bench)
        bench.workers.start(1)
    (record,) = wait_for_jobs(owner.client, [job], JOB_TIMEOUT_S)
    return record


def run_jobs(bench: Bench, owner: Tenant, quick: bool) -> int:
    """Part 1: the cycle and the thrice-interrupted job; returns the jobs lost."""
    records = kill_restart_cycle(bench, owner, jobs=1 if quick else 2, outer_iterations=3)
    labels = ["kill/restart cycle"] * len(records)
    records.append(three_interruptions(bench, owner))
    labels.append("three interruptions")
    bench.workers.stop()
    lost = 0
    for label, record in zip(labels, records):
        reason = why_lost(owner.http, record)
        lost += reason is not None
        print(f"  {label}: {record['id']} {record['status']}, attempts {record['attempts']}, "
              f"history {len(record['history'])}/{record['spec']['budget']['outer_iterations']}"
              + (f"  LOST: {reason}" if reason else ""))
        if reason is None and bench.detector_pt is None:
            bench.detector_pt = owner.http.get(f"/v1/jobs/{record['id']}/artifacts/detector.pt").content
    return lost


# --------------------------------------------------------------------------------------------
# 2. fuzz


def fuzz(bench: Bench, tenant: Tenant, examples: int, cap_s: float) -> int:
    """Part 2: schemathesis over every operation (valid and invalid data); returns the number
    of answers >= 500 (a dropped connection counts, as 599) and prints the worst (most
    frequent) kinds with a curl command each."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{bench.api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    headers = {"Authorization": f"Bearer {tenant.key}"}
    deadline = time.monotonic() + cap_s
    statuses: Counter = Counter()
    errors: dict[tuple, list[str]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(mode))
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def send(case) -> None:
                if time.monotonic() > deadline:
                    return
                try:
                    response = case.call(headers=headers, timeout=60)
                except requests.ConnectionError as error:  # the server dropped the request: an unhandled error
                    status, answer = 599, f"no answer ({type(error).__name__})"
                else:
                    status, answer = response.status_code, response.content[:200].decode(errors="replace")
                statuses[status] += 1
                if status >= 500:
                    errors.setdefault((status, operation.label), []).append(
                        f"{case.as_curl_command(headers=headers)}\n      -> {answer}")

            try:
                send()
            except Exception as error:  # noqa: BLE001  (no data for a mode, an unreachable request: not a 5xx)
                statuses[f"not sent ({type(error).__name__})"] += 1
    server_errors = sum(n for status, n in statuses.items() if isinstance(status, int) and status >= 500)
    print(f"  {sum(n for s, n in statuses.items() if isinstance(s, int))} requests over {len(operations)} operations"
          f"{' (time cap reached)' if time.monotonic() > deadline else ''}; answers {dict(sorted(statuses.items(), key=str))}")
    for (status, label), examples_ in sorted(errors.items(), key=lambda item: -len(item[1]))[:8]:
        print(f"  {status} {label} x{len(examples_)}, e.g.\n      {examples_[0]}")
    return server_errors


# --------------------------------------------------------------------------------------------
# 3. exploits


@dataclass
class Outcome:
    blocked: bool
    answer: str
    """Status and the start of the message."""
    problems: str = ""
    """Why it does not count as blocked."""


def judge(bench: Bench, tenant: Tenant, response: httpx.Response, statuses: set[int], names: list[str],
          before: tuple[set[Path], int], markers: tuple[Path, ...] = (), within_s: float | None = None) -> Outcome:
    """Blocked: a status of ``statuses``, a JSON ``detail`` naming each of ``names`` (unless
    413: a body-size limit names no field), no job and no file created, no marker written,
    and, with ``within_s``, answered that fast."""
    problems = []
    if response.status_code not in statuses:
        problems.append(f"expected {sorted(statuses)}")
    if response.is_success:
        detail = f"accepted: {response.json().get('id', '')}"
    else:
        try:
            detail = json.dumps(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = response.text
            problems.append("no JSON detail")
        missing = [name for name in names if name not in detail]
        if missing and response.status_code != 413:
            problems.append(f"message does not name {missing}")
    files, jobs = before
    if tenant.job_count() != jobs:
        problems.append(f"{tenant.job_count() - jobs} job(s) created")
    new_files = bench.stored_files() - files
    if new_files:
        problems.append(f"{len(new_files)} file(s) stored, e.g. {sorted(new_files)[0].relative_to(bench.work)}")
    problems += [f"marker {marker.name} written" for marker in markers if marker.exists()]
    elapsed = response.elapsed.total_seconds()
    if within_s is not None and elapsed > within_s:
        problems.append(f"took {elapsed:.1f} s (over {within_s} s)")
    return Outcome(not problems, f"{response.status_code} {detail[:150]}", "; ".join(problems))


def watch(bench: Bench, tenant: Tenant) -> tuple[set[Path], int]:
    return bench.stored_files(), tenant.job_count()


class _Pwn:
    """Unpickling this creates ``marker``: any code a tenant's pickle runs could do as much."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def evil_pickle(marker: Path) -> bytes:
    """A torch checkpoint whose unpickling writes ``marker``."""
    import torch

    buffer = io.BytesIO()
    torch.save({"model": _Pwn(str(marker))}, buffer)
    return buffer.getvalue()


def post_job(tenant: Tenant, request: dict | str) -> httpx.Response:
    if isinstance(request, str):  # raw JSON text (what json.dumps would not write)
        return tenant.http.post("/v1/jobs", content=request, headers={"Content-Type": "application/json"})
    return tenant.http.post("/v1/jobs", json=request)


def upload(tenant: Tenant, path: str, filename: str, data: bytes, **form) -> httpx.Response:
    return tenant.http.post(path, files={"file": (filename, data)}, data=form)


def target_members(bench: Bench) -> dict[str, bytes]:
    with zipfile.ZipFile(bench.inputs[1]) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist() if not name.endswith("/")}


def pickle_named_by_path(bench: Bench, attacker: Tenant) -> Outcome:
    """A target zip carries a pickle; a job names its absolute path in detector.weights
    (422; a worker then gets the chance to run whatever was created)."""
    marker = bench.work / "pwned-by-job"
    members = {**target_members(bench), "evil.pt": evil_pickle(marker)}
    archive = write_zip(bench.work / "evil-target.zip", members)
    uploaded = upload(attacker, "/v1/targets", archive.name, archive.read_bytes(), name="evil", format="coco")
    path = bench.work / "planted" / "evil.pt"  # where the upload is refused: a file elsewhere on the server
    if uploaded.status_code == 201:
        path = Storage(bench.settings.storage_root).record_dir("target", attacker.name, uploaded.json()["id"]) / "data/evil.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(members["evil.pt"])
    before = watch(bench, attacker)
    response = post_job(attacker, small_job(attacker.asset_id, attacker.target_id, detector={"weights": str(path.resolve())}))
    if response.status_code == 201:
        bench.workers.start(1)
        wait_for_jobs(attacker.client, [response.json()["id"]], JOB_TIMEOUT_S)
        bench.workers.stop()
    return judge(bench, attacker, response, {422}, ["detector.weights"], before, (marker,))


def pickle_weights_upload(bench: Bench, attacker: Tenant) -> Outcome:
    """A malicious pickle uploaded as detector weights (POST /v1/weights): refused, not stored."""
    marker = bench.work / "pwned-by-upload"
    before = watch(bench, attacker)
    response = upload(attacker, "/v1/weights", "evil.pt", evil_pickle(marker), name="evil")
    return judge(bench, attacker, response, UPLOAD_REFUSED, [], before, (marker,))


def other_tenants_weights(bench: Bench, attacker: Tenant) -> Outcome:
    """A job names another tenant's weights id as detector.weights (404)."""
    owner = bench.tenants[0]
    mine = upload(owner, "/v1/weights", "detector.pt", bench.detector_pt or b"", name="mine")
    weights_id = mine.json().get("id") if mine.status_code == 201 else "weights-0123456789abcdef"
    before = watch(bench, attacker)
    response = post_job(attacker, small_job(attacker.asset_id, attacker.target_id, detector={"weights": weights_id}))
    outcome = judge(bench, attacker, response, {404}, [weights_id], before)
    if mine.status_code != 201:
        outcome = Outcome(False, outcome.answer, f"the owner's weights upload answered {mine.status_code} "
                                                 f"{mine.text[:80]}; " + outcome.problems)
    return outcome


def trainer_writes_outside(bench: Bench, attacker: Tenant) -> Outcome:
    """final.trainer_overrides.project names a folder outside the storage root (422)."""
    outside = bench.work / "outside"
    before = watch(bench, attacker)
    response = post_job(attacker, small_job(attacker.asset_id, attacker.target_id,
                                            final={"trainer_overrides": {"project": str(outside)}}))
    return judge(bench, attacker, response, {422}, ["trainer_overrides"], before, (outside,))


def huge_psi_body(bench: Bench, attacker: Tenant) -> Outcome:
    """A 22 MB body of unknown psi keys (413 or 422, nothing stored)."""
    psi = {f"unknown_{i:07d}": "x" * 200 for i in range(22 * 1024 * 1024 // 220)}
    before = watch(bench, attacker)
    response = post_job(attacker, small_job(attacker.asset_id, attacker.target_id, psi={"initial": psi}))
    return judge(bench, attacker, response, {413, 422}, ["psi"], before)


def huge_unknown_field(bench: Bench, attacker: Tenant) -> Outcome:
    """A 100 MB unknown top-level field (413)."""
    before = watch(bench, attacker)
    response = post_job(attacker, {**small_job(attacker.asset_id, attacker.target_id), "padding": "x" * (100 << 20)})
    return judge(bench, attacker, response, {413}, [], before)


def raw_fov(text: str) -> Callable[[Bench, Tenant], Outcome]:
    def exploit(bench: Bench, attacker: Tenant) -> Outcome:
        before = watch(bench, attacker)
        request = json.dumps(small_job(attacker.asset_id, attacker.target_id))
        response = post_job(attacker, request.replace('"procedural_backgrounds": 1', f'"fov_deg": {text}'))
        return judge(bench, attacker, response, {422}, ["fov_deg"], before)

    exploit.__doc__ = f"scene.fov_deg {text}, sent as raw JSON (422 with a JSON body)"
    return exploit


def bad_target(name: str, members: Callable[[], dict[str, bytes]] | None, doc: str, names: tuple[str, ...] = (),
               within_s: float | None = None) -> Callable[[Bench, Tenant], Outcome]:
    """A target upload refused with 4xx naming the upload (and ``names``); ``members`` None:
    100 MB of zeros."""
    def exploit(bench: Bench, attacker: Tenant) -> Outcome:
        data = bytes(100 << 20) if members is None else write_zip(bench.work / name, members()).read_bytes()
        before = watch(bench, attacker)
        response = upload(attacker, "/v1/targets", name, data, name="bad")
        return judge(bench, attacker, response, UPLOAD_REFUSED, [name, *names], before, within_s=within_s)

    exploit.__doc__ = doc
    return exploit


def small_png(side: int = 16) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def coco_with(image: dict, bbox: list, png: bytes) -> dict[str, bytes]:
    annotations = {"images": [{"id": 1, "file_name": "images/a.png", **image}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": 0}],
                   "categories": [{"id": 1, "name": "thing"}]}
    return {"annotations.json": json.dumps(annotations).encode(), "images/a.png": png}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (RGB) with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def bad_field(doc: str, change: dict, names: list[str]) -> Callable[[Bench, Tenant], Outcome]:
    """A job request with ``change`` merged into the valid one (nested dicts merged): 422
    naming one of ``names``."""
    def exploit(bench: Bench, attacker: Tenant) -> Outcome:
        request = small_job(attacker.asset_id, attacker.target_id)
        for key, value in change.items():
            request[key] = {**request[key], **value} if isinstance(value, dict) and key in request else value
        before = watch(bench, attacker)
        return judge(bench, attacker, post_job(attacker, request), {422}, names, before)

    exploit.__doc__ = doc
    return exploit


EXPLOITS: list[Callable[[Bench, Tenant], Outcome]] = [
    # (a) code execution through pickles
    pickle_named_by_path,
    pickle_weights_upload,
    # (b) reaching outside the tenant's files
    other_tenants_weights,
    trainer_writes_outside,
    bad_field("final.trainer_overrides.model names a file", {"final": {"trainer_overrides": {"model": "x.pt"}}},
              ["trainer_overrides"]),
    # (c) exhausting memory
    bad_field("psi.initial.azimuth_bins 10000000", {"psi": {"initial": {"azimuth_bins": 10_000_000}}}, ["azimuth_bins"]),
    huge_psi_body,
    huge_unknown_field,
    # (e) 5xx on bad input
    bad_target("labels.zip", lambda: coco_with({"width": 16, "height": 16}, ["x", None, 1, 1], small_png()),
               'COCO bbox ["x", null, 1, 1] in a target upload', names=("bbox",)),
    bad_target("huge-png.zip", lambda: coco_with({"width": 60000, "height": 60000}, [1, 1, 8, 8],
                                                 png_declaring(60000, 60000)),
               "a PNG declaring 60000x60000 in a target upload"),
    raw_fov("1e309"),
    raw_fov("NaN"),
    # (f) accepted, then failed in the worker
    bad_field("seed -1", {"seed": -1}, ["seed"]),
    bad_field("seed 2**64", {"seed": 2**64}, ["seed"]),
    bad_field("seed 10**30", {"seed": 10**30}, ["seed"]),
    bad_field('detector.arch "bogus"', {"detector": {"arch": "bogus"}}, ["arch"]),
    bad_field("psi.initial.azimuth_bins 0", {"psi": {"initial": {"azimuth_bins": 0}}}, ["azimuth_bins"]),
    bad_field("psi.initial.azimuth_bins -3", {"psi": {"initial": {"azimuth_bins": -3}}}, ["azimuth_bins"]),
    bad_field("an unknown psi key", {"psi": {"initial": {"no_such_setting": 1}}}, ["no_such_setting"]),
    bad_field('hypergradient.damping "x"', {"hypergradient": {"damping": "x"}}, ["damping"]),
    bad_field('seed "3" (a string for an integer)', {"seed": "3"}, ["seed"]),
    bad_field("seed true (a boolean for an integer)", {"seed": True}, ["seed"]),
    bad_field('budget.outer_iterations "3"', {"budget": {"outer_iterations": "3"}}, ["outer_iterations"]),
    bad_field("budget.outer_iterations true", {"budget": {"outer_iterations": True}}, ["outer_iterations"]),
    bad_target("zeros.zip", None, "100 MB of zeros named .zip as a target (4xx within 5 s)", within_s=5.0),
]
"""The exploits of issue 22, each refused as intended once fixed."""


def cancel_unfinished(tenant: Tenant) -> None:
    """Cancel the tenant's queued jobs (what an exploit that got through created)."""
    for record in tenant.http.get("/v1/jobs", params={"limit": 200}).json()["data"]:
        if record["status"] in ("queued", "running"):
            tenant.http.post(f"/v1/jobs/{record['id']}/cancel")


def run_exploits(bench: Bench, attacker: Tenant) -> tuple[int, int]:
    """Part 3: (blocked, attempted)."""
    blocked = 0
    for exploit in EXPLOITS:
        name = (exploit.__doc__ or exploit.__name__).strip().splitlines()[0]
        start = time.monotonic()
        try:
            outcome = exploit(bench, attacker)
        except (httpx.HTTPError, TimeoutError, AssertionError, ValueError) as error:
            # A dropped connection is the server failing on the request (an unhandled error).
            outcome = Outcome(False, f"no answer: {type(error).__name__}: {error}"[:200], "no answer")
        finally:
            cancel_unfinished(attacker)
        blocked += outcome.blocked
        print(f"  {'blocked' if outcome.blocked else 'OPEN   '} {name} ({time.monotonic() - start:.1f} s)\n"
              f"           {outcome.answer}"
              + (f"\n           not blocked: {outcome.problems}" if outcome.problems else ""))
    return blocked, len(EXPLOITS)


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 cores")
    parser.add_argument("--examples", type=int, help="fuzz examples per operation and mode (default 200; 25 quick)")
    parser.add_argument("--fuzz-minutes", type=float, help="fuzz time cap (default 10; 2 quick)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, storage)")
    args = parser.parse_args()
    examples = args.examples or (25 if args.quick else 200)
    fuzz_s = 60 * (args.fuzz_minutes or (2 if args.quick else 10))

    work = Path(tempfile.mkdtemp(prefix="nerfsim-faults-"))
    server = None if os.environ.get("REDIS_URL") else RedisServer(work / "redis").start()
    settings = ServiceSettings(redis_url=os.environ.get("REDIS_URL") or server.url, storage_root=work / "storage",
                               queue_name=f"faults-{uuid.uuid4().hex[:8]}", rate_limit_per_s=0, **FAST_HEARTBEATS)
    api = ApiServer(settings, work / "api.log")
    workers = WorkerGroup(settings, work / "workers.log")
    try:
        api.start()
        bench = Bench(settings, api, workers, work, make_upload_inputs(work / "inputs"))
        owner = bench.tenant("owner")
        print(f"jobs (job_retries={settings.job_retries}; logs in {work}):")
        jobs_lost = run_jobs(bench, owner, args.quick)
        print(f"fuzz ({examples} examples per operation and mode, cap {fuzz_s:.0f} s):")
        fuzz_5xx = fuzz(bench, bench.tenant("fuzzer", inputs=False), examples, fuzz_s)
        print("exploits (by another tenant):")
        blocked, attempted = run_exploits(bench, bench.tenant("attacker"))
        print(f"fuzz_5xx={fuzz_5xx} exploits_blocked={blocked}/{attempted} jobs_lost={jobs_lost}")
    finally:
        workers.stop(timeout_s=30)
        api.stop()
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
