"""The whole service in one command: an embedded Redis (when ``REDIS_URL`` is unset), workers
and the API, for a laptop or a single machine.

Workers run as supervised child processes started with ``subprocess`` (a fresh interpreter:
nothing is forked from a process that has run torch), restarted if they die. The embedded
Redis keeps its data under ``<storage root>/redis`` and writes its URL to
``<storage root>/redis/url`` so that ``nerfsim keys`` finds it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from service.redis_server import RedisServer, free_port
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def embedded_url_file(storage_root: Path) -> Path:
    return Path(storage_root) / "redis" / "url"


def discover_redis_url(settings: ServiceSettings) -> str | None:
    """``REDIS_URL``, else the URL of a running embedded server for this storage root."""
    if settings.redis_url:
        return settings.redis_url
    path = embedded_url_file(settings.storage_root)
    if not path.is_file():
        return None
    url = path.read_text().strip()
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


class EmbeddedService:
    """Context manager: Redis (if needed) and ``workers`` supervised worker processes. Inside,
    ``settings`` has the Redis URL to give the API."""

    def __init__(self, settings: ServiceSettings, workers: int = 1, worker_env: dict[str, str] | None = None,
                 worker_log: Path | None = None) -> None:
        self.settings = settings.model_copy()
        self.num_workers = workers
        self.worker_env = worker_env or {}
        self.worker_log = worker_log
        """Where the workers' logs go (default: this process's stdout and stderr)."""
        self.redis_server: RedisServer | None = None
        self.workers: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def __enter__(self) -> "EmbeddedService":
        self.settings.storage_root.mkdir(parents=True, exist_ok=True)
        if self.settings.redis_url is None:
            data_dir = self.settings.storage_root / "redis"
            url_file = embedded_url_file(self.settings.storage_root)
            if discover_redis_url(self.settings) is not None:
                raise RuntimeError(f"an embedded Redis for {self.settings.storage_root} is already running "
                                   f"({url_file.read_text().strip()}): is another 'nerfsim serve' using this folder?")
            self.redis_server = RedisServer(data_dir, port=free_port()).start()
            url_file.write_text(self.redis_server.url + "\n")
            self.settings.redis_url = self.redis_server.url
            log.info("embedded Redis started", extra={"url": self.redis_server.url, "binary": str(self.redis_server.binary)})
        for _ in range(self.num_workers):
            self.workers.append(self._start_worker())
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def worker_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"REDIS_URL": self.settings.redis_url, "NERFSIM_STORAGE_ROOT": str(self.settings.storage_root.resolve()),
                    "NERFSIM_QUEUE_NAME": self.settings.queue_name})
        env.update(self.worker_env)
        return env

    def _start_worker(self) -> subprocess.Popen:
        output = open(self.worker_log, "a") if self.worker_log is not None else None
        process = subprocess.Popen([sys.executable, "-m", "service.worker"], env=self.worker_environment(),
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT if output else None)
        if output is not None:
            output.close()  # the child has its own descriptor
        log.info("worker process started", extra={"pid": process.pid})
        return process

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for index, process in enumerate(self.workers):
                if process.poll() is not None and not self._stopping.is_set():
                    log.warning("worker process exited; restarting", extra={"pid": process.pid, "code": process.returncode})
                    self.workers[index] = self._start_worker()

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for process in self.workers:
            if process.poll() is None:
                process.terminate()  # warm shutdown: the current job is re-queued within seconds
        deadline = time.monotonic() + 30
        for process in self.workers:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis_server is not None:
            self.redis_server.stop()
            embedded_url_file(self.settings.storage_root).unlink(missing_ok=True)
