"""Error answers of the /v1 routes, documented in the OpenAPI schema so that clients (and
schema checks) know them: ``{"detail": message}``, or FastAPI's list of request validation
problems."""

from __future__ import annotations

from service.schemas import ErrorDetail

ERRORS = {
    401: "Missing, malformed, unknown or revoked API key",
    404: "No such record for this API key's tenant",
    409: "The record's state does not allow this",
    413: "Request body or upload over the size limits",
    422: "Invalid request or upload (the message names the problem)",
    429: "Over the API key's rate limit (see Retry-After)",
    503: "The job store is unreachable (see Retry-After)",
}

ERROR_RESPONSES: dict[int | str, dict] = {code: {"model": ErrorDetail, "description": text} for code, text in ERRORS.items()}
"""For a router's ``responses``."""

STREAM_ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"description": text,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}}
    for code, text in ERRORS.items()
}
"""For a streaming route, whose errors are JSON, not its stream's media type (FastAPI would
document a ``model`` response under the route's media type)."""
