"""Typed errors from the live service (no worker: jobs stay queued), idempotent job creation,
waiting with a timeout, cancelling and deleting through the SDK."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pydantic
import pytest

from nerfsim_client import (
    AuthenticationError,
    Client,
    ConflictError,
    NerfsimError,
    NotFoundError,
    ValidationError,
    WaitTimeout,
)
from tests.service.jobs import tiny_job


def test_errors_are_typed_and_name_the_problem(service, asset_zip: Path, coco_zip: Path, yolo_zip: Path,
                                               tmp_path: Path) -> None:
    with Client(service.url, "nsk_0123456789ab_wrong") as stranger:
        with pytest.raises(AuthenticationError, match="unknown API key") as caught:
            stranger.list_jobs()
        assert caught.value.status_code == 401 and caught.value.headers["www-authenticate"] == "Bearer"

    with Client(service.url, service.api_key) as client:
        asset = client.upload_asset(asset_zip, name="box")
        target = client.upload_target(coco_zip, name="real", role="both")
        assert [a.id for a in client.list_assets()] == [asset.id] and client.get_target(target.id).format == "coco"

        with pytest.raises(NotFoundError):
            client.get_job("job-0000000000000000")
        with pytest.raises(pydantic.ValidationError, match=r"image_size\n.*multiple of 32"):  # checked here
            client.create_job(tiny_job(asset, target, detector={"image_size": 48}))
        with pytest.raises(ValidationError, match=r"preset: Input should be 'appearance', 'neural-sim-appearance'") as caught:
            client.create_job(tiny_job(asset, target), preset="magic")  # checked by the service
        assert caught.value.status_code == 422 and isinstance(caught.value.detail, list)
        test_only = client.upload_target(yolo_zip, name="held-out", role="test")
        with pytest.raises(ValidationError, match="uploaded as a test set") as caught:
            client.create_job(tiny_job(asset, test_only))
        assert caught.value.status_code == 400

        broken = tmp_path / "broken.zip"
        with zipfile.ZipFile(broken, "w") as bundle:
            bundle.writestr("annotations.json", "{not json")
        with pytest.raises(ValidationError, match="broken.zip: no COCO annotation json") as caught:
            client.upload_target(broken, name="broken")
        assert caught.value.status_code == 422

        job = client.create_job(tiny_job(asset, target), idempotency_key="order-7")
        assert client.create_job(tiny_job(asset, target), idempotency_key="order-7").id == job.id
        with pytest.raises(ConflictError, match="different request"):
            client.create_job(tiny_job(asset, target, seed=5), idempotency_key="order-7")
        assert client.create_job(tiny_job(asset, target)).id != job.id  # a new key each call
        assert {j.id for j in client.list_jobs(status="queued")} >= {job.id}

        began = time.monotonic()
        with pytest.raises(WaitTimeout):
            job.wait(timeout=1.0, progress=False)  # no worker: it stays queued
        assert time.monotonic() - began < 5

        assert job.cancel().status == "cancelled"
        with pytest.raises(ConflictError, match="already cancelled"):
            job.cancel()
        assert [e.data["status"] for e in job.events()] == ["queued", "cancelled"]
        assert job.wait(progress=False).status == "cancelled"
        with pytest.raises(NerfsimError, match="no artifact 'detector' .*cancelled"):
            job.download("detector", tmp_path)
        with pytest.raises(ConflictError, match="is used by job"):
            client.delete_target(target)  # the other job still waits in the queue
        job.delete()
        with pytest.raises(NotFoundError):
            job.refresh()
