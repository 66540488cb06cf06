"""Steps the dashboard tests share: sign in, upload a file through a form, create a job from
the job form (with the tiny job's settings as its advanced JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.service.jobs import TINY_JOB


def sign_in(browser, service, ready_id: str) -> WebDriverWait:
    """Open the dashboard, sign in with the service's key, wait for element ``ready_id``."""
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(service.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(service.api_key + "\n")
    wait.until(lambda b: b.find_elements(By.ID, ready_id))
    return wait


def upload_through(browser, wait: WebDriverWait, form_id: str, path: Path, name: str) -> None:
    form = browser.find_element(By.ID, form_id)
    form.find_element(By.NAME, "file").send_keys(str(path))
    form.find_element(By.NAME, "name").send_keys(name)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: f"uploaded {name}" in form.text)


def tick_first_asset(browser, wait: WebDriverWait):
    """The job form, once its first ready asset is ticked."""
    job_form = browser.find_element(By.ID, "job-form")
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=assets]"))
    job_form.find_element(By.CSS_SELECTOR, "input[name=assets]").click()
    return job_form


def create_tiny_job(browser, wait: WebDriverWait, job_form) -> str:
    """Submit the job form with TINY_JOB as advanced settings; the new job's id."""
    job_form.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "job-advanced").send_keys(json.dumps(TINY_JOB))
    browser.find_element(By.ID, "create-job").click()
    wait.until(lambda b: "#/jobs/job-" in b.current_url)
    return browser.current_url.rsplit("/", 1)[1]
