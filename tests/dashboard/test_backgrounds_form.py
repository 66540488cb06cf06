"""Background photos in the dashboard (headless Chromium, live service, no worker): upload a set
through its form, see it listed, tick it in the job form; the job names it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.dashboard.forms import create_tiny_job, sign_in, tick_first_asset, upload_through
from tests.service.jobs import setup_job_inputs
from tests.service.test_archives import write_zip
from tests.service.test_backgrounds import photo_bytes

pytestmark = pytest.mark.slow


def test_background_photos_are_uploaded_and_ticked_for_a_job(browser, service, asset_zip: Path, coco_zip: Path,
                                                              tmp_path: Path) -> None:
    photos = write_zip(tmp_path / "kitchen.zip", {"a.jpg": photo_bytes(64, 48), "b.jpg": photo_bytes(64, 48, seed=1)})
    headers = {"Authorization": f"Bearer {service.api_key}"}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        setup_job_inputs(http, headers, asset_zip, coco_zip)
    wait = sign_in(browser, service, "backgrounds-form")

    upload_through(browser, wait, "backgrounds-form", photos, "kitchen")
    wait.until(lambda b: "kitchen 2 photos" in b.find_element(By.ID, "backgrounds").text)

    job_form = tick_first_asset(browser, wait)
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=backgrounds]"))
    assert "kitchen (2 photos)" in browser.find_element(By.ID, "job-backgrounds").text
    job_form.find_element(By.CSS_SELECTOR, "input[name=backgrounds]").click()
    job_id = create_tiny_job(browser, wait, job_form)

    with httpx.Client(base_url=service.url, timeout=60) as http:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        backgrounds = http.get("/v1/backgrounds", headers=headers).json()["data"]
    assert [b["name"] for b in backgrounds] == ["kitchen"] and job["spec"]["scene"]["backgrounds"] == [backgrounds[0]["id"]]
