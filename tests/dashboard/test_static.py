"""The dashboard's files are served by the API itself (no CDN): the page at ``/``, its scripts
and styles under ``/dashboard/``, nothing outside that folder; the API's own 404s stay JSON."""

from __future__ import annotations

import re

from service.api.main import DASHBOARD_DIR


def test_the_page_and_everything_it_loads_come_from_the_service(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loaded = re.findall(r'(?:src|href)="([^"#]+)"', page.text) + ["dashboard/charts.js"]
    assert "dashboard/app.js" in loaded and "dashboard/style.css" in loaded
    for path in loaded:
        if path.startswith("data:"):
            continue
        assert not re.match(r"(https?:)?//", path), f"{path} would be fetched from outside the service"
        response = client.get(f"/{path}")
        assert response.status_code == 200, path
    for script in DASHBOARD_DIR.glob("*.js"):
        imports = re.findall(r'from "([^"]+)"', script.read_text())
        assert all(i.startswith("./") and (DASHBOARD_DIR / i).is_file() for i in imports), (script.name, imports)
    assert client.get("/dashboard/app.js").headers["content-type"].split(";")[0] in ("text/javascript",
                                                                                    "application/javascript")


def test_nothing_outside_the_dashboard_folder_is_served(client) -> None:
    # Sent as is (a client normalises a plain '..' away before sending).
    assert client.get("/dashboard/%2e%2e/api/main.py").status_code == 404
    assert client.get("/dashboard/%2e%2e/%2e%2e/pyproject.toml").status_code == 404
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
