"""Request hygiene the routes cannot do themselves: a size limit on JSON request bodies that
answers before the body is read whole, and validation errors whose answer is always JSON."""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """A request body over the JSON limit. An HTTPException, so that FastAPI's body reader
    passes it on as it is (it turns other errors into a 400) and its handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the {limit} byte limit of JSON requests "
                              "(uploads are multipart/form-data)")


class JsonBodyLimit:
    """ASGI middleware: a request that is not a multipart upload may send at most ``max_bytes``
    (uploads have their own, larger limit). A declared Content-Length over it is refused at
    once; a chunked body is counted as it arrives and refused at the first chunk past it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or headers.get("content-type", "").startswith("multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def noting_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, noting_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        error = BodyTooLarge(self.max_bytes)
        await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


def _json_safe(value):
    """``value`` with every non-finite float as its text (JSON has no inf or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer, with the offending inputs made JSON-safe (its own handler fails
    with a 500 on ``"fov_deg": 1e309`` or NaN, echoing the input back)."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(error.errors()))}, status_code=422)
