"""Splat assets through the SDK, sync and async, against the live service (no worker: the
uploads are checked and queued)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nerfsim_client import AsyncClient, Client, ValidationError
from tests.service.test_splat_assets import good_ply


def test_splat_uploads_over_the_sdk(service, tmp_path: Path) -> None:
    ply = good_ply(tmp_path / "capture")
    with Client(service.url, service.api_key) as client:
        asset = client.upload_asset(ply, name="capture", kind="splat", build={"up_axis": "z", "scale": 0.5})
        assert asset.kind == "splat" and asset.status == "building" and asset.data["build"]["scale"] == 0.5
        (tmp_path / "broken.ply").write_text("nothing")
        with pytest.raises(ValidationError, match="broken.ply: not a readable PLY file") as caught:
            client.upload_asset(tmp_path / "broken.ply", name="broken", kind="splat")
        assert caught.value.status_code == 422
        assert [a.id for a in client.list_assets(kind="splat")] == [asset.id]

    async def scenario() -> None:
        async with AsyncClient(service.url, service.api_key) as client:
            second = await client.upload_asset(ply, name="capture2", kind="splat")
            assert second.kind == "splat"
            assert len(await client.list_assets(kind="splat")) == 2

    asyncio.run(scenario())
