"""The API application: routers, error handling, startup (Redis connection, recovery of
records and queued jobs) and request metrics."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import redis
import redis.asyncio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from service.api.limits import JsonBodyLimit, validation_error
from service.api.responses import ERROR_RESPONSES
from service.api.routes import assets, backgrounds, health, jobs, presets, targets, weights
from service.errors import ServiceError
from service.keys import AuthError, KeyStore
from service.metrics import build_registry
from service.queue import get_queue
from service.ratelimit import RateLimited, RateLimiter
from service.records import RecordStore
from service.recovery import recover
from service.settings import ServiceSettings, get_settings
from service.storage import Storage

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
"""The web dashboard's static files (served at ``/``, its scripts and styles under ``/dashboard/``)."""


class RequestMetrics:
    """Observe each request's latency by route template (a plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` costs more than a status request itself)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            state = scope["app"].state if "app" in scope else None
            if route is not None and state is not None and hasattr(state, "latency"):
                state.latency.labels(scope["method"], route.path, str(status["code"])).observe(time.perf_counter() - start)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        storage = Storage(settings.storage_root, settings.artifact_mirror)
        storage.root.mkdir(parents=True, exist_ok=True)
        app.state.settings = settings
        app.state.redis = connection
        app.state.async_redis = redis.asyncio.Redis.from_url(settings.redis_url)
        app.state.store = RecordStore(connection, storage)
        app.state.keys = KeyStore(connection, storage)
        app.state.queue = get_queue(connection, settings)
        app.state.rate_limiter = RateLimiter(connection, settings.rate_limit_per_s, settings.rate_limit_burst)
        app.state.metrics, app.state.latency = build_registry(connection, app.state.queue)
        try:
            recover(app.state.store, app.state.keys, app.state.queue, settings)
        except redis.RedisError as error:
            log.error("recovery skipped: Redis unreachable", extra={"error": str(error)})
        yield
        await app.state.async_redis.aclose()
        connection.close()

    if settings.redis_url is None:
        raise ServiceError("REDIS_URL is not set (nerfsim serve starts an embedded Redis when it is unset)")
    app = FastAPI(
        title="nerfsim",
        version="1",
        summary="NeRF-rendered object-detection training data, tuned to your target domain.",
        lifespan=lifespan,
        max_body_size=settings.max_upload_bytes + 1024 * 1024,
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        headers = None
        if isinstance(error, AuthError):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(error, RateLimited):
            headers = {"Retry-After": str(error.retry_after_s)}
        return JSONResponse({"detail": str(error)}, status_code=error.status_code, headers=headers)

    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(redis.ConnectionError)
    async def redis_down(request: Request, error: redis.ConnectionError) -> JSONResponse:
        return JSONResponse({"detail": "the job store is unreachable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    app.add_middleware(JsonBodyLimit, max_bytes=settings.max_json_body_bytes)
    app.add_middleware(RequestMetrics)

    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    v1.include_router(assets.router)
    v1.include_router(targets.router)
    v1.include_router(weights.router)
    v1.include_router(backgrounds.router)
    v1.include_router(jobs.router)
    v1.include_router(presets.router)
    app.include_router(v1)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")
    return app
