"""The dashboard in a real headless Chromium against the live service (real Redis, a real
worker): sign in, upload an asset and a target set through the forms, create a tiny job, watch
its progress and the psi chart update over server-sent events, download the dataset, and see
the final metrics beside the job's own uniform baseline. The job page's screenshot is saved in
the test's folder (and, with NERFSIM_UPDATE_DOCS=1, as docs/dashboard.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.service.conftest import REPO
from tests.service.jobs import TINY_JOB

pytestmark = pytest.mark.slow


def _api(service, path: str) -> dict:
    return httpx.get(service.url + path, headers={"Authorization": f"Bearer {service.api_key}"}).json()


def text(browser, selector: str) -> str | None:
    """The text of the element ``selector``, read in the page in one step (the page redraws
    parts on every event, so an element found a moment ago may already be replaced)."""
    return browser.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent",
                                  selector)


def console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_dashboard_runs_a_job(browser, service, workers, asset_zip: Path, coco_zip: Path, downloads: Path,
                              tmp_path: Path) -> None:
    workers.start()
    # The page redraws parts on every event: an element found a moment ago may be replaced.
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(service.url + "/")
    assert browser.title == "nerfsim"

    # A wrong key is refused; the right one signs in.
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("nsk_0123456789ab_wrong\n")
    wait.until(lambda b: "unknown API key" in b.find_element(By.ID, "sign-in-error").text)
    key.clear()
    key.send_keys(service.api_key + "\n")
    wait.until(lambda b: b.find_elements(By.ID, "jobs"))

    # Upload the asset and the labelled set through the forms.
    asset_form = browser.find_element(By.ID, "asset-form")
    asset_form.find_element(By.NAME, "file").send_keys(str(asset_zip))
    asset_form.find_element(By.NAME, "name").send_keys("box")
    asset_form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "uploaded box" in asset_form.text)
    target_form = browser.find_element(By.ID, "target-form")
    target_form.find_element(By.NAME, "file").send_keys(str(coco_zip))
    target_form.find_element(By.NAME, "name").send_keys("real")
    Select(target_form.find_element(By.NAME, "role")).select_by_value("both")
    target_form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "uploaded real" in target_form.text)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#targets li"))
    browser.save_screenshot(str(tmp_path / "home.png"))

    # Create a tiny job: the box as the only class, the set for validation and test.
    job_form = browser.find_element(By.ID, "job-form")
    wait.until(lambda b: job_form.find_elements(By.CSS_SELECTOR, "input[name=assets]"))
    job_form.find_element(By.CSS_SELECTOR, "input[name=assets]").click()
    wait.until(lambda b: len(Select(job_form.find_element(By.NAME, "target_test")).options) == 2)
    Select(job_form.find_element(By.NAME, "target_test")).select_by_index(1)
    # The presets come from the API, the default chosen and described.
    wait.until(lambda b: len(Select(job_form.find_element(By.NAME, "preset")).options) >= 3)
    chosen = Select(job_form.find_element(By.NAME, "preset")).first_selected_option
    presets = _api(service, "/v1/presets")
    assert chosen.get_attribute("value") == presets["default"]
    assert text(browser, "#job-preset-description") == presets["data"][0]["description"]
    # So do psi's parts, and the budget's fields with their defaults (the JobSpec's OpenAPI schema).
    budget = _api(service, "/openapi.json")["components"]["schemas"]["BudgetSection"]["properties"]
    assert [i.get_attribute("name") for i in job_form.find_elements(By.CSS_SELECTOR, "#job-budget input")] == \
        [*budget, "image_size"]
    assert job_form.find_element(By.NAME, "final_epochs").get_attribute("value") == str(budget["final_epochs"]["default"])
    assert [i.get_attribute("value") for i in job_form.find_elements(By.NAME, "learnable")] == presets["parts"]
    job_form.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "job-advanced").send_keys(json.dumps(TINY_JOB))
    browser.find_element(By.ID, "create-job").click()
    wait.until(lambda b: "#/jobs/job-" in b.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]

    # Live progress: the outer iterations go by, the psi chart shows each one, then the job ends.
    slow = WebDriverWait(browser, 240, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    psi_iterations = set()

    def outer_seen(b) -> bool:
        # Read in the page: the chart is redrawn on every event.
        shown = b.execute_script("const c = document.getElementById('psi-azimuth-chart');"
                                 "return c ? [+c.dataset.iteration, c.querySelectorAll('path').length] : null")
        if shown:
            psi_iterations.add(tuple(shown))
        return (1, 8) in psi_iterations

    slow.until(outer_seen)
    slow.until(lambda b: text(b, "#job-status .badge") in ("succeeded", "failed"))
    assert text(browser, "#job-status .badge") == "succeeded", text(browser, "#job-error") + workers.logs()[-3000:]
    assert psi_iterations >= {(0, 8), (1, 8)}, psi_iterations  # drawn live at each iteration
    assert text(browser, "#progress-text") == "done"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curve-loss-chart polyline")) == 2
    assert browser.find_elements(By.CSS_SELECTOR, "#psi-zoom-chart polyline")
    wait.until(lambda b: b.execute_script(
        "return [...document.querySelectorAll('#samples img')].some(i => i.complete && i.naturalWidth >= 256)"))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#final-metrics tr[data-metric=test_map50_95]"))

    # Every artifact has a download button; the dataset arrives whole.
    buttons = {b.get_attribute("id") for b in browser.find_elements(By.CSS_SELECTOR, "#artifacts button")}
    assert {"download-dataset.zip", "download-detector.pt", "download-report.json", "download-psi.json"} <= buttons
    browser.find_element(By.ID, "download-dataset.zip").click()
    saved = downloads / "dataset.zip"
    slow.until(lambda b: saved.is_file() and not list(downloads.glob("*.crdownload")))
    assert saved.read_bytes() == service.artifact_file(job_id, "dataset.zip").read_bytes()
    assert text(browser, "#download-status-dataset\\.zip") == "saved"

    # The job's own uniform baseline shows beside its final metrics, with the difference.
    cells = browser.execute_script("return [...document.querySelectorAll("
                                   "'#final-metrics tr[data-metric=test_map50_95] td')].map(td => td.textContent)")
    assert cells[0] == "test mAP50-95" and "–" not in cells and "95 % bootstrap" in cells[3], cells
    done = _api(service, f"/v1/jobs/{job_id}")["progress"]["metrics"]
    assert cells[2] == browser.execute_script("return (+arguments[0].toPrecision(3)).toString()",
                                              done["baseline_test_map50_95"])
    assert text(browser, "#job-meta").startswith("neural-sim")  # the preset TINY_JOB names
    wait.until(lambda b: b.execute_script(
        "return [...document.querySelectorAll('#samples img')].some(i => i.complete && i.naturalWidth >= 256)"))

    wait.until(lambda b: b.execute_script(  # the progress bar's animation has ended
        "const bar = document.getElementById('progress-bar').getBoundingClientRect();"
        "return document.querySelector('.bar-fill').getBoundingClientRect().width >= bar.width - 1"))
    height = browser.execute_script("return document.querySelector('main').getBoundingClientRect().bottom + 16")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the whole page in one screenshot
                            {"width": 1400, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("NERFSIM_UPDATE_DOCS") == "1":
        from PIL import Image

        Image.open(screenshot).convert("RGB").quantize(128).save(REPO / "docs" / "dashboard.png", optimize=True)
    # The only error the page logged: the wrong key's 401.
    assert [e for e in console_errors(browser) if "401 (Unauthorized)" not in e] == []
