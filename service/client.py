"""A small Python client of the nerfsim API (used by ``nerfsim demo`` and the benchmark)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


class ApiError(RuntimeError):
    """An error answer of the API (its status and message)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class NerfsimClient:
    """Calls of the /v1 API with one API key."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 120.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json() if response.content else None

    def upload_asset(self, archive: Path, name: str, kind: str, build: dict | None = None) -> dict:
        with open(archive, "rb") as handle:
            return self._answer(self.http.post("/v1/assets", files={"file": (Path(archive).name, handle)},
                                               data={"name": name, "kind": kind, "build": json.dumps(build or {})}))

    def upload_target(self, archive: Path, name: str, role: str = "validation", fmt: str | None = None) -> dict:
        form = {"name": name, "role": role, **({"format": fmt} if fmt else {})}
        with open(archive, "rb") as handle:
            return self._answer(self.http.post("/v1/targets", files={"file": (Path(archive).name, handle)}, data=form))

    def create_job(self, request: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._answer(self.http.post("/v1/jobs", json=request, headers=headers))

    def job(self, job_id: str) -> dict:
        return self._answer(self.http.get(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict:
        return self._answer(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, data) of the job's server-sent events until its final status."""
        event: dict[str, Any] = {}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                self._answer(response)
            for line in response.iter_lines():
                if not line:
                    if "data" in event:
                        yield event.get("event", "message"), json.loads(event["data"])
                    event = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    event[field] = value.removeprefix(" ")

    def download(self, job_id: str, name: str, destination: Path) -> Path:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                self._answer(response)
            with open(destination, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return destination
