"""Request hygiene the routes cannot do themselves: a size limit on JSON request bodies that
answers before the body is read whole, and validation errors whose answer is always JSON."""

from __future__ import annotations

import math

from fastapi import Request, params
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
    """ASGI middleware: a request to a route that takes no upload (no form body) may send at
    most ``max_bytes``; upload routes keep the app's larger limit. Decided when the route reads
    its body (the router has matched it by then), whatever the Content-Type claims: a declared
    Content-Length over the limit is refused before any of the body is read, a chunked body at
    the first chunk past it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        declared_bytes = int(declared) if declared.isdigit() else 0
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            if _takes_upload(scope.get("route")):
                return await receive()
            if declared_bytes > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
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
        except BodyTooLarge as error:
            if started:
                raise
            await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


def _takes_upload(route) -> bool:
    """Whether ``route`` reads a form (a multipart upload) as its body."""
    body_field = getattr(route, "body_field", None)
    return body_field is not None and isinstance(body_field.field_info, params.Form)


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
