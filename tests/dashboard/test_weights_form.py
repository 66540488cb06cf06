"""Detector weights in the dashboard (headless Chromium, live service, no worker): upload a
checkpoint through its form, see it listed, pick it in the job form; the job names it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from detector.model import DetectorConfig, build_detector, save_detector
from tests.service.jobs import TINY_JOB, setup_job_inputs

pytestmark = pytest.mark.slow


def test_weights_are_uploaded_and_picked_for_a_job(browser, service, asset_zip: Path, coco_zip: Path,
                                                   tmp_path: Path) -> None:
    weights_file = save_detector(build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=["box"])),
                                 tmp_path / "boxes.pt")
    headers = {"Authorization": f"Bearer {service.api_key}"}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        setup_job_inputs(http, headers, asset_zip, coco_zip)
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(service.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(service.api_key + "\n")
    wait.until(lambda b: b.find_elements(By.ID, "weights-form"))

    form = browser.find_element(By.ID, "weights-form")
    form.find_element(By.NAME, "file").send_keys(str(weights_file))
    form.find_element(By.NAME, "name").send_keys("boxes v1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "uploaded boxes v1" in form.text)
    wait.until(lambda b: "boxes v1" in b.find_element(By.ID, "weights").text)

    job_form = browser.find_element(By.ID, "job-form")
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=assets]"))
    job_form.find_element(By.CSS_SELECTOR, "input[name=assets]").click()
    picker = job_form.find_element(By.NAME, "detector_weights")
    wait.until(lambda b: len(Select(picker).options) == 2)
    Select(picker).select_by_visible_text("boxes v1 (box)")
    job_form.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "job-advanced").send_keys(json.dumps(TINY_JOB))
    browser.find_element(By.ID, "create-job").click()
    wait.until(lambda b: "#/jobs/job-" in b.current_url)

    job_id = browser.current_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=service.url, timeout=60) as http:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        weights = http.get("/v1/weights", headers=headers).json()["data"]
    assert [w["name"] for w in weights] == ["boxes v1"] and job["detector_weights"] == weights[0]["id"]
