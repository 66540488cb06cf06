"""Detector weights in the dashboard (headless Chromium, live service, no worker): upload a
checkpoint through its form, see it listed, pick it in the job form; the job names it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from detector.model import DetectorConfig, build_detector, save_detector
from tests.dashboard.forms import create_tiny_job, sign_in, tick_first_asset, upload_through
from tests.service.jobs import setup_job_inputs

pytestmark = pytest.mark.slow


def test_weights_are_uploaded_and_picked_for_a_job(browser, service, asset_zip: Path, coco_zip: Path,
                                                   tmp_path: Path) -> None:
    weights_file = save_detector(build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box"])),
                                 tmp_path / "boxes.pt")
    headers = {"Authorization": f"Bearer {service.api_key}"}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        setup_job_inputs(http, headers, asset_zip, coco_zip)
    wait = sign_in(browser, service, "weights-form")

    upload_through(browser, wait, "weights-form", weights_file, "boxes v1")
    wait.until(lambda b: "boxes v1" in b.find_element(By.ID, "weights").text)

    job_form = tick_first_asset(browser, wait)
    picker = job_form.find_element(By.NAME, "detector_weights")
    wait.until(lambda b: len(Select(picker).options) == 2)
    Select(picker).select_by_visible_text("boxes v1 (box)")
    job_id = create_tiny_job(browser, wait, job_form)

    with httpx.Client(base_url=service.url, timeout=60) as http:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        weights = http.get("/v1/weights", headers=headers).json()["data"]
    assert [w["name"] for w in weights] == ["boxes v1"] and job["spec"]["detector"]["weights"] == weights[0]["id"]
