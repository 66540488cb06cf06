"""Detector weights through the SDK, sync and async, against the live service (no worker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from detector.model import DetectorConfig, build_detector, save_detector
from nerfsim_client import AsyncClient, Client, ConflictError, NotFoundError, ValidationError, Weights
from tests.detector.test_checkpoint import _RunsCode
from tests.service.jobs import tiny_job


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    model = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box", "mug"]))
    return save_detector(model, tmp_path / "boxes.pt")


def test_weights_upload_list_use_and_delete(service, asset_zip: Path, coco_zip: Path, weights_file: Path,
                                            tmp_path: Path) -> None:
    with Client(service.url, service.api_key) as client:
        weights = client.upload_weights(weights_file, name="boxes")
        assert isinstance(weights, Weights) and weights.class_names == ["box", "mug"]
        assert weights.size_bytes == weights_file.stat().st_size and weights.parameters > 0
        assert client.get_weights(weights.id) == weights
        assert [w.id for w in client.list_weights()] == [weights.id]

        asset = client.upload_asset(asset_zip, name="box")
        target = client.upload_target(coco_zip, name="real", role="both")
        job = client.create_job(tiny_job(asset, target, detector={"weights": weights}))
        assert job.spec.detector.weights == weights.id
        assert client.create_job(tiny_job(asset, target, detector={"weights": weights.id})).spec.detector.weights == weights.id
        assert client.create_job(tiny_job(asset, target)).spec.detector.weights is None
        with pytest.raises(ConflictError, match="are used by job"):
            client.delete_weights(weights)
        with pytest.raises(NotFoundError, match="weights weights-0123456789abcdef not found"):
            client.create_job(tiny_job(asset, target, detector={"weights": "weights-0123456789abcdef"}))

        marker = tmp_path / "marker"
        torch.save({"model": _RunsCode(marker)}, tmp_path / "evil.pt")
        with pytest.raises(ValidationError, match="evil.pt: not a YOLO detection checkpoint") as caught:
            client.upload_weights(tmp_path / "evil.pt", name="evil")
        assert caught.value.status_code == 422 and not marker.exists()
        with pytest.raises(FileNotFoundError):
            client.upload_weights(tmp_path, name="a folder")

        for queued in client.list_jobs(status="queued"):
            queued.cancel()
        client.delete_weights(weights)
        with pytest.raises(NotFoundError):
            client.get_weights(weights.id)


def test_async_weights_calls(service, weights_file: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(service.url, service.api_key) as client:
            weights = await client.upload_weights(weights_file, name="boxes")
            assert (await client.get_weights(weights.id)).class_names == ["box", "mug"]
            assert [w.id for w in await client.list_weights()] == [weights.id]
            await client.delete_weights(weights.id)
            assert await client.list_weights() == []

    asyncio.run(scenario())
