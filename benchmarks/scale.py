"""Scale-out: the same small closed-loop jobs on 1 worker process and on 3, in one run.

One Redis, one API process (``nerfsim serve --workers 0``, as deployed) and worker processes
(``nerfsim worker``) talk over the loopback interface, through the HTTP API. Three workers
start and are warmed up with one job each (the first job of a process pays one-off set-up);
the jobs are submitted at once to the three; then two workers stop and the same jobs are
submitted to the remaining one. Throughput is jobs per minute between the first submission and the last finish (the
records' own timestamps); a job's queue wait is its start minus its creation.

Jobs are CPU-bound, so on a machine with C cores 3 workers gain at most min(3, C)x (~2x on 2
cores), less whatever else runs there: the benchmark also measures that ceiling (3 pure-CPU
loops against 1) right after the jobs.

    python benchmarks/scale.py [--quick] [--jobs 12] [--workers 3]

Last line: ``throughput_3_over_1=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import redis
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nerfsim_client import Client  # noqa: E402
from service.redis_server import free_port  # noqa: E402
from service.schemas import TERMINAL_STATUSES  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402

SMALL_JOB: dict = {
    "preset": "neural-sim",  # 4 images per iteration (the default preset renders each scene at 8 bins)
    "device": "cpu",
    "scene": {"procedural_backgrounds": 1},
    "budget": {"outer_iterations": 1, "images_per_iteration": 4, "inner_steps": 1, "final_images": 4,
               "final_epochs": 1},
    "hypergradient": {"inverse_hessian_steps": 1},
    "detector": {"image_size": 32, "warmup_steps": 1, "val_map_every": 0, "sample_images": 1, "val_batch_size": 8},
    "final": {"batch_size": 4, "uniform_baseline": False},
}
"""A closed-loop job (a JobSpec without its references) of a few seconds on one CPU core
(untrained asset, 32 px; the same work as before the uniform baseline arm, so the measured
throughputs compare)."""


def small_job(asset_id: str, target_id: str, seed: int = 0, outer_iterations: int = 1, **changes: dict) -> dict:
    """:data:`SMALL_JOB` on ``asset_id`` against ``target_id``; ``changes``: fields merged into
    their sections (``hypergradient={"damping": 1.0}``)."""
    job = {**SMALL_JOB, "seed": seed, "scene": {**SMALL_JOB["scene"], "assets": [asset_id]}, "targets": {"val": target_id},
           "budget": {**SMALL_JOB["budget"], "outer_iterations": outer_iterations}}
    return {**job, **{section: {**job.get(section, {}), **fields} for section, fields in changes.items()}}


def settings_env(settings: ServiceSettings) -> dict[str, str]:
    """The environment that gives another process ``settings`` (NERFSIM_* and REDIS_URL)."""
    env = {f"NERFSIM_{name.upper()}": str(value) for name, value in settings.model_dump().items()
           if value is not None and name != "redis_url"}
    env["REDIS_URL"] = settings.redis_url
    return env


def process_env(settings: ServiceSettings) -> dict[str, str]:
    """This process's environment with ``settings``, single-threaded math and the repository
    importable: for the API and worker processes."""
    return {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "client")))}


class ApiServer:
    """``nerfsim serve --workers 0`` (the API alone, on ``settings.redis_url``) on a free
    loopback port, its logs in ``log_path``."""

    def __init__(self, settings: ServiceSettings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> "ApiServer":
        """Start it and wait until ``/readyz`` answers 200."""
        command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "0"]
        with open(self.log_path, "a") as log:
            # A session of its own, as a container's (see WorkerGroup).
            self.process = subprocess.Popen(command, cwd=REPO, env=process_env(self.settings), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API was not ready after {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class WorkerGroup:
    """``nerfsim worker`` processes on ``settings``, their JSON logs appended to ``log_path``.
    Not restarted when they die (that is the orchestrator's part: Compose, Kubernetes, or the
    test).

    Each worker runs in a session of its own, as a container or a service unit would: Linux
    shares the CPU between sessions first (scheduler autogroups), so workers started in the
    caller's session would split one session's share among them however many they are."""

    def __init__(self, settings: ServiceSettings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int = 1) -> list[subprocess.Popen]:
        started = []
        for _ in range(count):
            with open(self.log_path, "a") as log:
                started.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=REPO,
                                                env=process_env(self.settings), stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True))
        self.processes += started
        return started

    @property
    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def stop(self, processes: list[subprocess.Popen] | None = None, timeout_s: float = 60.0) -> None:
        """SIGTERM (a busy worker re-queues its job and exits), SIGKILL after ``timeout_s``."""
        processes = self.alive if processes is None else processes
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def wait_for_workers(settings: ServiceSettings, count: int, timeout_s: float = 120.0) -> None:
    """Wait until exactly ``count`` workers listen on the queue."""
    from rq import Queue, Worker

    queue = Queue(settings.queue_name, connection=redis.Redis.from_url(settings.redis_url))
    deadline = time.monotonic() + timeout_s
    while len(Worker.all(queue=queue)) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {count} workers on the queue after {timeout_s} s")
        time.sleep(0.2)


def wait_for_jobs(client: Client, job_ids: list[str], timeout_s: float, progress: bool = False) -> list[dict]:
    """The final records of ``job_ids`` once every one has finished (succeeded, failed or
    cancelled). Polls the job list: one request however many jobs."""
    deadline = time.monotonic() + timeout_s
    wanted, done = set(job_ids), {}
    with tqdm(total=len(job_ids), desc="jobs", unit="job", disable=not progress, leave=False) as bar:
        while len(done) < len(wanted):
            for record in (job.data for job in client.list_jobs(limit=200)):
                if record["id"] in wanted and record["id"] not in done and record["status"] in TERMINAL_STATUSES:
                    done[record["id"]] = record
                    bar.update(1)
            if len(done) < len(wanted):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(wanted) - len(done)} of {len(wanted)} jobs unfinished after {timeout_s} s")
                time.sleep(0.5)  # the measures come from the records, not from here
    return [done[job_id] for job_id in job_ids]


def log_entries(log: Path) -> list[dict]:
    """The JSON-lines entries of a service log (other lines, such as warnings, skipped)."""
    entries = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def job_starts(worker_log: Path) -> Counter:
    """How many times each job was started, from the workers' logs."""
    return Counter(e["job_id"] for e in log_entries(worker_log) if e.get("message") == "job started")


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class RoundResult:
    """The measured jobs of one round."""

    workers: int
    records: list[dict]
    starts: Counter
    """Job id -> times a worker started it (from the logs)."""
    ran_on: Counter = field(default_factory=Counter)
    """Worker name -> measured jobs it ran."""

    @property
    def makespan_s(self) -> float:
        return max(_time(r["finished_at"]) for r in self.records) - min(_time(r["created_at"]) for r in self.records)

    @property
    def throughput_per_min(self) -> float:
        return 60.0 * len(self.records) / self.makespan_s

    @property
    def queue_waits_s(self) -> list[float]:
        return [_time(r["started_at"]) - _time(r["created_at"]) for r in self.records]

    @property
    def run_times_s(self) -> list[float]:
        return [_time(r["finished_at"]) - _time(r["started_at"]) for r in self.records]

    def summary(self) -> str:
        waits, runs = self.queue_waits_s, self.run_times_s
        return (f"{self.workers} worker(s): {len(self.records)} jobs in {self.makespan_s:.1f} s = "
                f"{self.throughput_per_min:.1f} jobs/min; queue wait mean {statistics.mean(waits):.1f} s, "
                f"median {statistics.median(waits):.1f} s, max {max(waits):.1f} s; run time median "
                f"{statistics.median(runs):.1f} s; jobs per worker {sorted(self.ran_on.values(), reverse=True)}")


def warm_up(client: Client, workers: int, request: dict, timeout_s: float = 600.0) -> None:
    """One job per idle worker (each is blocked waiting on the queue, so each takes one): the
    first job of a process pays one-off set-up that the measured jobs should not."""
    wait_for_jobs(client, [client.create_job(request).id for _ in range(workers)], timeout_s)


def run_round(client: Client, settings: ServiceSettings, group: WorkerGroup, requests: list[dict],
              timeout_s: float = 900.0, progress: bool = False) -> RoundResult:
    """Submit ``requests`` at once to the (idle) workers of ``group`` and wait for all of them."""
    from rq.job import Job

    workers = len(group.alive)
    wait_for_workers(settings, workers)
    job_ids = [client.create_job(request).id for request in requests]
    records = wait_for_jobs(client, job_ids, timeout_s, progress)
    connection = redis.Redis.from_url(settings.redis_url)
    ran_on = Counter(Job.fetch(job_id, connection=connection).worker_name for job_id in job_ids)
    starts = job_starts(group.log_path)
    return RoundResult(workers, records, Counter({job_id: starts[job_id] for job_id in job_ids}), ran_on)


def scale_rounds(client: Client, settings: ServiceSettings, group: WorkerGroup, scaled: list[dict],
                 single: list[dict], workers: int = 3, progress: bool = False) -> tuple[RoundResult, RoundResult]:
    """``scaled`` on ``workers`` warm workers, then ``single`` on one of them (the others are
    stopped): the same processes, warmed up once."""
    group.start(workers)
    wait_for_workers(settings, workers)
    warm_up(client, workers, scaled[0])
    many = run_round(client, settings, group, scaled, progress=progress)
    group.stop(group.alive[1:])
    one = run_round(client, settings, group, single, progress=progress)
    return many, one


SPIN = "import time\nend, n = time.perf_counter() + {seconds}, 0\nwhile time.perf_counter() < end: n += 1\nprint(n)"


def parallel_ceiling(processes: int = 3, seconds: float = 3.0) -> float:
    """What ``processes`` pure-CPU loops (each in a session of its own, as the workers) get done
    together, over one alone, on this machine right now: the most that scaling out can give
    here (other work on the machine lowers it)."""
    def spin(count: int) -> int:
        loops = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)], stdout=subprocess.PIPE, text=True,
                                  start_new_session=True) for _ in range(count)]
        return sum(int(loop.communicate()[0]) for loop in loops)

    return spin(processes) / spin(1)


def make_upload_inputs(folder: Path) -> tuple[Path, Path]:
    """A small ready asset (an untrained field of class ``thing``) and a 4-image COCO set of
    its class, zipped."""
    from benchmarks.service import make_inputs

    return make_inputs(folder)


def upload_inputs(client: Client, archives: tuple[Path, Path]) -> tuple[str, str]:
    """Upload :func:`make_upload_inputs`' asset and target; returns (asset id, target id)."""
    asset_zip, target_zip = archives
    asset = client.upload_asset(asset_zip, "thing", "nerfsim")
    target = client.upload_target(target_zip, "real", "validation", "coco")
    return asset.id, target.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 one-iteration jobs per round (2 to 3 minutes)")
    parser.add_argument("--jobs", type=int, help="jobs per round (default 12; 6 with --quick)")
    parser.add_argument("--workers", type=int, default=3, help="workers of the scaled round")
    parser.add_argument("--outer-iterations", type=int, help="outer iterations per job (default 2; 1 with --quick)")
    args = parser.parse_args()
    jobs = args.jobs or (6 if args.quick else 12)
    iterations = args.outer_iterations or (1 if args.quick else 2)

    from service.keys import KeyStore
    from service.redis_server import RedisServer
    from service.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="nerfsim-scale-"))
    server = RedisServer(work / "redis").start()
    settings = ServiceSettings(redis_url=server.url, storage_root=work / "storage", queue_name="scale",
                               rate_limit_per_s=0, heartbeat_interval_s=2, worker_idle_poll_s=17)
    try:
        with ApiServer(settings, work / "api.log") as api:
            key, _ = KeyStore(redis.Redis.from_url(server.url), Storage(settings.storage_root)).create("scale")
            client = Client(api.url, key, progress=False)
            asset_id, target_id = upload_inputs(client, make_upload_inputs(work / "inputs"))
            requests = [small_job(asset_id, target_id, seed=i, outer_iterations=iterations) for i in range(jobs)]
            print(f"{jobs} jobs per round ({iterations} outer iteration(s), 32 px, CPU), {os.cpu_count()} CPU cores; "
                  f"logs in {work}")
            with WorkerGroup(settings, work / "workers.log") as group:
                many, one = scale_rounds(client, settings, group, requests, requests, args.workers, progress=True)
            for result in (one, many):
                failed = [r["id"] for r in result.records if r["status"] != "succeeded"]
                repeated = [job_id for job_id, n in result.starts.items() if n != 1]
                print(f"  {result.summary()}")
                if failed or repeated:
                    print(f"  not succeeded: {failed}; not started exactly once: {repeated}")
    finally:
        server.stop()
    ratio = many.throughput_per_min / one.throughput_per_min
    ceiling = parallel_ceiling(args.workers)
    print(f"throughput {args.workers} workers / 1 worker: x{ratio:.2f}; {args.workers} pure-CPU loops / 1 on this machine "
          f"now: x{ceiling:.2f} ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    print(f"throughput_{args.workers}_over_1={ratio:.2f}")


if __name__ == "__main__":
    main()
