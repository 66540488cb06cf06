"""Background photos in the dashboard (headless Chromium, live service, no worker): upload a set
through its form, see it listed, tick it in the job form; the job names it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.service.jobs import TINY_JOB, setup_job_inputs
from tests.service.test_archives import write_zip
from tests.service.test_backgrounds import photo_bytes

pytestmark = pytest.mark.slow


def test_background_photos_are_uploaded_and_ticked_for_a_job(browser, service, asset_zip: Path, coco_zip: Path,
                                                              tmp_path: Path) -> None:
    photos = write_zip(tmp_path / "kitchen.zip", {"a.jpg": photo_bytes(64, 48), "b.jpg": photo_bytes(64, 48, seed=1)})
    headers = {"Authorization": f"Bearer {service.api_key}"}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        setup_job_inputs(http, headers, asset_zip, coco_zip)
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(service.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(service.api_key + "\n")
    wait.until(lambda b: b.find_elements(By.ID, "backgrounds-form"))

    form = browser.find_element(By.ID, "backgrounds-form")
    form.find_element(By.NAME, "file").send_keys(str(photos))
    form.find_element(By.NAME, "name").send_keys("kitchen")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "uploaded kitchen" in form.text)
    wait.until(lambda b: "kitchen 2 photos" in b.find_element(By.ID, "backgrounds").text)

    job_form = browser.find_element(By.ID, "job-form")
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=assets]"))
    job_form.find_element(By.CSS_SELECTOR, "input[name=assets]").click()
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=backgrounds]"))
    assert "kitchen (2 photos)" in browser.find_element(By.ID, "job-backgrounds").text
    job_form.find_element(By.CSS_SELECTOR, "input[name=backgrounds]").click()
    job_form.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "job-advanced").send_keys(json.dumps(TINY_JOB))
    browser.find_element(By.ID, "create-job").click()
    wait.until(lambda b: "#/jobs/job-" in b.current_url)

    job_id = browser.current_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=service.url, timeout=60) as http:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        backgrounds = http.get("/v1/backgrounds", headers=headers).json()["data"]
    assert [b["name"] for b in backgrounds] == ["kitchen"] and job["backgrounds"] == [backgrounds[0]["id"]]
