"""A splat in the dashboard (headless Chromium, live service, no worker): a .ply uploaded through
the asset form as kind splat is listed as a splat being built; a bad one shows the API's reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.dashboard.forms import sign_in, upload_through
from tests.service.test_splat_assets import good_ply

pytestmark = pytest.mark.slow


def test_a_splat_ply_is_uploaded_through_the_asset_form(browser, service, tmp_path: Path) -> None:
    wait = sign_in(browser, service, "asset-form")
    form = browser.find_element(By.ID, "asset-form")
    Select(form.find_element(By.NAME, "kind")).select_by_visible_text("splat")
    form.find_element(By.TAG_NAME, "summary").click()  # open the build settings
    form.find_element(By.NAME, "build").send_keys('{"up_axis": "z"}')
    upload_through(browser, wait, "asset-form", good_ply(tmp_path / "capture"), "capture")
    wait.until(lambda b: "capture splat · building" in b.find_element(By.ID, "assets").text)

    (tmp_path / "broken.ply").write_text("nothing")
    Select(form.find_element(By.NAME, "kind")).select_by_visible_text("splat")  # the form was reset
    form.find_element(By.NAME, "file").send_keys(str(tmp_path / "broken.ply"))
    form.find_element(By.NAME, "name").send_keys("broken")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "broken.ply: not a readable PLY file" in form.text)
