"""What a tenant downloads from a finished job: the loop's best detector (by REST, the SDK and
the CLI), and a report and config without the server's paths."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from detector.model import load_detector
from nerfsim_client import Client
from service.cli import main
from tests.service.jobs import strings, tiny_job

pytestmark = pytest.mark.slow


def test_the_best_detector_and_portable_reports_are_downloadable(service, workers, box_asset: Path, coco_zip: Path,
                                                                  tmp_path: Path) -> None:
    workers.start()
    (tmp_path / "sdk").mkdir()
    (tmp_path / "cli").mkdir()
    with Client(service.url, service.api_key, progress=False) as client:
        asset = client.upload_asset(box_asset, name="box")
        target = client.upload_target(coco_zip, name="real", role="both", format="coco")
        job = client.create_job(tiny_job(asset, target, targets={"test": target})).wait(timeout=240)
        assert job.status == "succeeded" and "best_loop_detector.pt" in job.artifacts

        # The SDK, by the artifact's kind.
        sdk = job.download("best_loop_detector", tmp_path / "sdk")
        report = json.loads(job.download("report", tmp_path / "sdk").read_text())
        config = json.loads(job.download("config", tmp_path / "sdk").read_text())

    # The file is a detector the safe loader reads, and the one the report names.
    assert sdk == tmp_path / "sdk" / "best_loop_detector.pt"
    load_detector(sdk)
    assert report["best_loop_detector"]["file"] == "best_loop_detector.pt"
    assert report["best_loop_detector"]["iteration"] in (0, 1)

    # REST: listed among the artifacts and served like them.
    headers = {"Authorization": f"Bearer {service.api_key}"}
    listed = httpx.get(f"{service.url}/v1/jobs/{job.id}/artifacts", headers=headers).json()
    assert listed["best_loop_detector.pt"] == f"/v1/jobs/{job.id}/artifacts/best_loop_detector.pt"
    assert httpx.get(f"{service.url}{listed['best_loop_detector.pt']}", headers=headers).content == sdk.read_bytes()

    # The CLI, through the SDK.
    assert main(["download", job.id, "best_loop_detector", "--out", str(tmp_path / "cli"), "--url", service.url,
                 "--api-key", service.api_key]) == 0
    assert (tmp_path / "cli" / "best_loop_detector.pt").read_bytes() == sdk.read_bytes()
    assert main(["download", job.id, "nothing", "--url", service.url, "--api-key", service.api_key]) == 2

    # No server path in what was downloaded; the config names its files relative to the tenant's space.
    root = str(service.settings.storage_root.resolve())
    for name, data in (("report", report), ("config", config)):
        assert not [s for s in strings(data) if s.startswith("/") or root in s], (name, data)
    assert config["targets"]["val"].startswith(f"targets/{target.id}/")
    assert config["scene"]["spec"]["objects"][0]["path"].startswith(f"assets/{asset.id}/")  # the scene inline
