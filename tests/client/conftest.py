"""SDK test harness: the service's own fixtures (a real Redis, real worker processes, the tiny
test box and its labelled set) and the API served over real HTTP by uvicorn on a free local
port, with a new tenant's API key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.demo import _serve_in_thread
from service.settings import ServiceSettings
from tests.service.conftest import (  # noqa: F401  (fixtures used by this folder's tests)
    asset_zip,
    box_target,
    coco_zip,
    make_key,
    redis_server,
    redis_url,
    settings,
    workers,
    yolo_zip,
)


@pytest.fixture
def live_api(settings: ServiceSettings) -> Iterator[str]:
    """Base URL of the API (``create_app(settings)``) served over HTTP in this process."""
    url, server, thread = _serve_in_thread(settings)
    yield url
    server.should_exit = True
    thread.join(30)


@dataclass
class LiveService:
    url: str
    api_key: str
    settings: ServiceSettings

    def artifact_file(self, job_id: str, name: str) -> Path:
        """Where the service keeps a job's artifact (to compare downloads with)."""
        return next(self.settings.storage_root.rglob(f"{job_id}/artifacts/{name}"))


@pytest.fixture
def service(live_api: str, make_key, settings: ServiceSettings) -> LiveService:
    """The live API and a new tenant's API key."""
    return LiveService(live_api, make_key("sdk")["Authorization"].removeprefix("Bearer "), settings)
