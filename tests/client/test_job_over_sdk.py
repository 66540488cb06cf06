"""A tiny job through the SDK against the live service (real Redis, a real worker process):
upload a folder and a labelled set, create the job, wait for it with a progress bar while the
async client follows its events live, replay and resume the events, and download artifacts
through connections that break halfway (resumed with HTTP Range, in the same call and in the
next one)."""

from __future__ import annotations

import asyncio
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from nerfsim_client import APIConnectionError, AsyncClient, BaselineComparison, Client, JobSpec, RetryPolicy
from tests.client.servers import CuttingProxy
from tests.service.jobs import tiny_job

pytestmark = pytest.mark.slow


def upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def test_a_job_from_upload_to_download(service, workers, box_asset: Path, coco_zip: Path, tmp_path: Path,
                                       capsys) -> None:
    workers.start()
    with Client(service.url, service.api_key) as client:
        asset = client.upload_asset(box_asset, name="box")  # a folder: zipped on the fly
        assert asset.status == "ready" and asset.kind == "nerfsim"
        target = client.upload_target(coco_zip, name="real", role="both", format="coco")
        assert target.num_images == 8 and target.class_names == ["box"]
        spec = JobSpec.model_validate(tiny_job(asset.id, target.id, targets={"test": target.id}))  # typed
        job = client.create_job(spec, idempotency_key="sdk-test-1")
        assert job.status == "queued"
        assert client.create_job(spec.model_dump(), idempotency_key="sdk-test-1").id == job.id  # a dict of its shape
        assert job.spec.targets.test == target.id

        live: list = []

        async def follow() -> None:
            async with AsyncClient(service.url, service.api_key, progress=False) as async_client:
                async for event in (await async_client.get_job(job.id)).events():
                    live.append(event)

        follower = threading.Thread(target=asyncio.run, args=(follow(),))
        follower.start()
        capsys.readouterr()
        assert job.wait(timeout=240) is job
        follower.join(30)
        bar = capsys.readouterr().err
        assert job.status == "succeeded" and {"dataset.zip", "detector.pt", "report.json"} <= set(job.artifacts)
        # The preset it ran, and its final detector against its own uniform baseline, as typed fields.
        assert job.preset == spec.preset == "neural-sim" and [p.name for p in client.list_presets()][0] == "appearance"
        comparison = job.baseline
        assert isinstance(comparison, BaselineComparison)
        assert comparison.difference == pytest.approx(comparison.final_map50_95 - comparison.baseline_map50_95)
        assert comparison.difference_low <= comparison.difference_high
        assert f"{job.id}: outer" in bar and "2/2" in bar, bar[-2000:]

        events = list(job.events())
        assert [e.id for e in live] == [e.id for e in events]
        assert events[0].data["status"] == "queued" and events[-1].is_final and events[-1].data["status"] == "succeeded"
        outer = [e.data["iteration"] for e in events if e.event == "progress" and e.data["stage"] == "outer"]
        assert outer == [0, 1]
        assert [e.id for e in job.events(last_event_id=events[2].id)] == [e.id for e in events[3:]]

    # An event stream that breaks mid-event is resumed from the last whole event: no event is
    # lost or repeated.
    with CuttingProxy(upstream(service.url), "/events", cut_after=700) as proxy:
        with Client(proxy.url, service.api_key, retry=RetryPolicy(backoff_base_s=0.05)) as client:
            assert [e.id for e in client.get_job(job.id).events()] == [e.id for e in events]
    resumed = [h for line, h in proxy.requests if "/events" in line]
    assert proxy.cuts == 1 and len(resumed) == 2 and resumed[1]["last-event-id"] in [e.id for e in events]

    # A download whose connection breaks is resumed inside the same call, with one bar.
    original = service.artifact_file(job.id, "detector.pt").read_bytes()
    cut = len(original) // 3
    (tmp_path / "resumed").mkdir()
    with CuttingProxy(upstream(service.url), "/artifacts/detector.pt", cut_after=cut) as proxy:
        with Client(proxy.url, service.api_key, retry=RetryPolicy(backoff_base_s=0.05)) as client:
            capsys.readouterr()
            path = client.get_job(job.id).download("detector", tmp_path / "resumed")
            bar = capsys.readouterr().err
    assert path == tmp_path / "resumed" / "detector.pt" and path.read_bytes() == original
    asked = [h for line, h in proxy.requests if "/artifacts/detector.pt" in line]
    assert [h.get("range") for h in asked] == [None, f"bytes={cut}-"] and asked[1]["if-range"]
    assert bar.count("detector.pt") >= 1 and bar.strip().count("\n") == 0, bar  # one bar, closed once
    assert not list(path.parent.glob("*.part*"))

    # Without retries the call fails, keeps what it got, and the next call resumes from there.
    original = service.artifact_file(job.id, "dataset.zip").read_bytes()
    cut = len(original) // 2
    destination = tmp_path / "later" / "dataset.zip"
    with CuttingProxy(upstream(service.url), "/artifacts/dataset.zip", cut_after=cut) as proxy:
        with Client(proxy.url, service.api_key, retry=RetryPolicy(max_retries=0), progress=False) as client:
            with pytest.raises(APIConnectionError, match="run it again to resume"):
                client.get_job(job.id).download("dataset.zip", destination)
            assert (tmp_path / "later" / "dataset.zip.part").stat().st_size == cut
            assert client.get_job(job.id).download("dataset.zip", destination) == destination
    assert [h.get("range") for line, h in proxy.requests if "/artifacts/" in line] == [None, f"bytes={cut}-"]
    assert destination.read_bytes() == original
    with zipfile.ZipFile(destination) as dataset:
        assert "annotations.json" in dataset.namelist() and "data.yaml" in dataset.namelist()

    # The async client downloads too (and a stale partial file of another version is replaced).
    report = tmp_path / "async" / "report.json"
    report.parent.mkdir()
    report.with_name("report.json.part").write_bytes(b"an older version")
    report.with_name("report.json.part.json").write_text(
        f'{{"url": "/v1/jobs/{job.id}/artifacts/report.json", "validator": "\\"stale\\""}}')

    async def download() -> Path:
        async with AsyncClient(service.url, service.api_key, progress=False) as async_client:
            return await (await async_client.get_job(job.id)).download("report", report.parent)

    assert asyncio.run(download()).read_bytes() == service.artifact_file(job.id, "report.json").read_bytes()
