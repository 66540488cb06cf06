"""Retrying a job through the SDK, blocking and async, against the live service (no worker:
jobs stay queued, and a job cancelled while queued is cancelled at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nerfsim_client import AsyncClient, Client, ConflictError
from tests.service.jobs import tiny_job


def test_a_cancelled_job_is_retried_and_a_queued_one_is_a_conflict(service, asset_zip: Path, coco_zip: Path) -> None:
    with Client(service.url, service.api_key, progress=False) as client:
        asset = client.upload_asset(asset_zip, name="box")
        target = client.upload_target(coco_zip, name="real", role="both")
        job = client.create_job(tiny_job(asset, target))
        with pytest.raises(ConflictError, match=f"job {job.id} is queued; only a failed or cancelled job can be retried"):
            job.retry()
        assert job.cancel().status == "cancelled"
        assert job.retry() is job and job.status == "queued" and not job.data["cancel_requested"]
        with pytest.raises(ConflictError, match="is queued"):
            client.retry_job(job.id)
        assert job.cancel().status == "cancelled"
        again = client.retry_job(job)
        assert again.id == job.id and again.status == "queued"

        async def retry_async() -> list[str]:
            async with AsyncClient(service.url, service.api_key, progress=False) as async_client:
                queued = await async_client.get_job(job.id)
                await queued.cancel()
                statuses = [(await queued.retry()).status]
                await queued.cancel()
                statuses.append((await async_client.retry_job(job.id)).status)
                with pytest.raises(ConflictError):
                    await async_client.retry_job(queued)
                return statuses

        assert asyncio.run(retry_async()) == ["queued", "queued"]
        assert client.get_job(job.id).status == "queued"
