"""``nerfsim serve`` without ``REDIS_URL``: one command starts an embedded Redis, a worker
process and the API; ``nerfsim keys`` finds the embedded Redis; SIGTERM stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from rq import Worker

from service.embedded import embedded_url_file
from service.redis_server import free_port
from tests.service.conftest import REPO, wait_for

pytestmark = pytest.mark.slow


def test_serve_runs_the_whole_service(tmp_path: Path) -> None:
    storage, port = tmp_path / "storage", free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NERFSIM_REDIS_URL")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "client")))})
    cli = [sys.executable, "-m", "service.cli"]
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([*cli, "serve", "--port", str(port), "--storage", str(storage)], cwd=REPO, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return serve.poll() is not None and pytest.fail((tmp_path / "serve.log").read_text())

        wait_for(ready, 90, "the API to be ready")
        url = embedded_url_file(storage).read_text().strip()
        connection = redis.Redis.from_url(url)
        assert connection.config_get("appendonly")["appendonly"] == "yes"
        wait_for(lambda: len(Worker.all(connection=connection)) == 1, 60, "the worker to register")

        created = subprocess.run([*cli, "keys", "create", "--tenant", "laptop", "--storage", str(storage)], cwd=REPO,
                                 env=env, capture_output=True, text=True, check=True)
        key = created.stdout.strip().splitlines()[-1]
        key_id = key.split("_")[1]
        assert connection.exists(f"nerfsim:apikey:{key_id}")  # the CLI found the embedded Redis
        assert httpx.get(f"{base}/v1/jobs", headers={"X-API-Key": key}).json() == {"data": [], "count": 0}
        assert "nerfsim_queue_depth" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "nerfsim"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not embedded_url_file(storage).exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_timeout=1).ping()
