"""Background photo sets through the SDK, sync and async, against the live service (no worker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nerfsim_client import AsyncClient, Backgrounds, Client, ConflictError, NotFoundError, ValidationError
from tests.service.jobs import tiny_job
from tests.service.test_archives import write_zip
from tests.service.test_backgrounds import photo_bytes


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of two photos (the SDK zips a folder on the fly)."""
    folder = tmp_path / "kitchen"
    (folder / "left").mkdir(parents=True)
    (folder / "left" / "a.jpg").write_bytes(photo_bytes(64, 48))
    (folder / "b.png").write_bytes(photo_bytes(32, 32, "PNG"))
    return folder


def test_backgrounds_upload_list_use_and_delete(service, asset_zip: Path, coco_zip: Path, photos: Path,
                                                tmp_path: Path) -> None:
    with Client(service.url, service.api_key) as client:
        kitchen = client.upload_backgrounds(photos, name="kitchen")
        assert isinstance(kitchen, Backgrounds) and kitchen.num_images == 2
        assert kitchen.image_sizes == {"32x32": 1, "64x48": 1} and kitchen.size_bytes > 0
        wall = client.upload_backgrounds(photos / "b.png", name="wall")
        assert wall.num_images == 1
        assert client.get_backgrounds(kitchen.id) == kitchen
        assert [b.id for b in client.list_backgrounds()] == [wall.id, kitchen.id]

        asset = client.upload_asset(asset_zip, name="box")
        target = client.upload_target(coco_zip, name="real", role="both")
        job = client.create_job(tiny_job(asset, target, scene={"backgrounds": [kitchen, wall.id]}))
        assert job.data["spec"]["scene"]["backgrounds"] == [kitchen.id, wall.id] == job.spec.scene.backgrounds
        assert client.create_job(tiny_job(asset, target)).spec.scene.backgrounds == []
        with pytest.raises(ConflictError, match="are used by job"):
            client.delete_backgrounds(kitchen)
        with pytest.raises(NotFoundError, match="backgrounds backgrounds-0123456789abcdef not found"):
            client.create_job(tiny_job(asset, target, scene={"backgrounds": ["backgrounds-0123456789abcdef"]}))

        broken = write_zip(tmp_path / "broken.zip", {"ok.jpg": photo_bytes(8, 8), "bad.jpg": b"\xff\xd8\xff broken"})
        with pytest.raises(ValidationError, match="broken.zip:bad.jpg: unreadable image") as caught:
            client.upload_backgrounds(broken, name="broken")
        assert caught.value.status_code == 422
        assert len(client.list_backgrounds()) == 2

        for queued in client.list_jobs(status="queued"):
            queued.cancel()
        client.delete_backgrounds(kitchen)
        with pytest.raises(NotFoundError):
            client.get_backgrounds(kitchen.id)


def test_async_backgrounds_calls(service, photos: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(service.url, service.api_key) as client:
            kitchen = await client.upload_backgrounds(photos, name="kitchen")
            assert (await client.get_backgrounds(kitchen.id)).num_images == 2
            assert [b.id for b in await client.list_backgrounds()] == [kitchen.id]
            await client.delete_backgrounds(kitchen.id)
            assert await client.list_backgrounds() == []

    asyncio.run(scenario())
