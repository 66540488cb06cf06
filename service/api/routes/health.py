"""Liveness, readiness and Prometheus metrics (no API key needed)."""

from __future__ import annotations

import uuid

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import RedisDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: Redis unreachable or storage not writable"}})
def readyz(connection: RedisDep, store: StoreDep) -> JSONResponse:
    """Ready to take requests: Redis answers and the storage root is writable."""
    checks = {}
    try:
        checks["redis"] = "ok" if connection.ping() else "no answer"
    except redis.RedisError as error:
        checks["redis"] = f"unreachable: {error}"
    probe = store.storage.root / f".ready-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        checks["storage"] = "ok"
    except OSError as error:
        checks["storage"] = f"not writable: {error}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """Prometheus metrics: queue depth, running and finished jobs, job durations, rendered images,
    API request latencies."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
