"""``nerfsim worker``: takes jobs from the Redis queue and runs them, one at a time.

Fork-safe and CUDA-safe by construction: the worker never forks. RQ's default worker forks a
work horse per job, which deadlocks once the parent has started torch's thread pools (and
cannot use CUDA initialised before the fork); this worker is RQ's ``SimpleWorker``, which runs
each job in its own process, so torch, CUDA and the imported models are set up once and reused
by every job. Workers are started as fresh processes (``nerfsim worker``, or by ``nerfsim
serve`` through ``subprocess``), never forked from a process that has run torch.

While a job runs, a heartbeat thread renews the worker's and the job's liveness every
``heartbeat_interval_s``; when a worker dies (kill -9, a lost machine), its job's lease expires
``heartbeat_grace_s`` later, and the next maintenance pass of any worker retries it - from its
last checkpoint. A graceful stop (SIGTERM/SIGINT) does not wait for the job to end: the job is
interrupted within seconds and goes straight back to the queue, where another worker resumes
it from its checkpoint, without using up a retry. Many workers on many machines may share one Redis and one storage root.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

import redis
from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker, WorkerStatus

from service.environment import offline_environment
from service.interruption import interrupt_current
from service.logs import configure_logging
from service.queue import get_queue
from service.settings import ServiceSettings, get_settings

log = logging.getLogger(__name__)


class NerfsimWorker(SimpleWorker):
    """A SimpleWorker (jobs run in this process) with heartbeats while a job runs."""

    heartbeat_grace_s: int = 60

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """The job's lease: renewed every ``job_monitoring_interval``, lost after the grace."""
        return int(self.job_monitoring_interval + self.heartbeat_grace_s)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._keep_alive, args=(job, execution, done), name="heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def request_stop(self, signum, frame) -> None:
        """Warm shutdown: RQ's (a second signal stops at once), and the running job, which may
        have hours left, is interrupted now and re-queued (service.tasks.on_failure)."""
        super().request_stop(signum, frame)
        if interrupt_current():
            log.info("worker stopping: interrupting the running job to re-queue it", extra={"worker": self.name})

    def _keep_alive(self, job: Job, execution, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as error:
                log.warning("heartbeat failed", extra={"job_id": job.id, "error": str(error)})


def build_worker(settings: ServiceSettings, connection: redis.Redis, name: str | None = None) -> NerfsimWorker:
    worker = NerfsimWorker(
        [get_queue(connection, settings)],
        name=name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}",
        connection=connection,
        worker_ttl=settings.worker_idle_poll_s,
        maintenance_interval=settings.maintenance_interval_s,
        job_monitoring_interval=settings.heartbeat_interval_s,
    )
    worker.heartbeat_grace_s = settings.heartbeat_grace_s
    return worker


def run_worker(settings: ServiceSettings | None = None, burst: bool = False, max_jobs: int | None = None,
               name: str | None = None) -> bool:
    """Work until stopped (SIGTERM/SIGINT: re-queue the current job and stop; twice: stop now); with
    ``burst``, until the queue is empty. Returns whether any job ran."""
    settings = settings or get_settings()
    if settings.redis_url is None:
        raise ValueError("REDIS_URL is not set: a worker needs the service's Redis")
    configure_logging(settings.log_json)
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
    offline_environment()
    import torch

    torch.set_num_threads(settings.threads)
    try:
        import optimizer.loop  # noqa: F401  (import the heavy stack once, before the first job)
    except ImportError:
        log.warning("optimizer.loop is not importable: closed-loop jobs will fail")
    connection = redis.Redis.from_url(settings.redis_url)
    worker = build_worker(settings, connection, name)
    log.info("worker starting", extra={"worker": worker.name, "queue": settings.queue_name, "pid": os.getpid()})
    return worker.work(burst=burst, max_jobs=max_jobs, logging_level="INFO")


if __name__ == "__main__":
    run_worker()
