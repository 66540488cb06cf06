"""Deployment tests: the API as its own process (``nerfsim serve --workers 0``, as deployed),
worker processes and the service tests' Redis, over the loopback interface.

The Redis server, settings and in-process API client fixtures are the service tests' own
(imported here, so that tests/deploy runs alone too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scale import ApiServer, make_upload_inputs, upload_inputs
from nerfsim_client import Client
from service.settings import ServiceSettings
from tests.service.conftest import make_key, redis_server, redis_url, settings  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def small_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Zipped small ready asset (an untrained field, class ``thing``) and 4-image COCO set."""
    return make_upload_inputs(tmp_path_factory.mktemp("small-inputs"))


@pytest.fixture
def api(settings: ServiceSettings, tmp_path: Path) -> Iterator[ApiServer]:
    """The API process on the test's settings."""
    with ApiServer(settings, tmp_path / "api.log") as server:
        yield server


@pytest.fixture
def api_client(api: ApiServer, make_key) -> Iterator[Client]:
    """A client (the SDK) of the API process with a new tenant's key."""
    client = Client(api.url, make_key("deploy")["Authorization"].removeprefix("Bearer "), progress=False)
    yield client
    client.close()


@pytest.fixture
def small_job_inputs(api_client: Client, small_inputs: tuple[Path, Path]) -> tuple[str, str]:
    """(asset id, target id) of the small inputs, uploaded for ``api_client``'s tenant."""
    return upload_inputs(api_client, small_inputs)
