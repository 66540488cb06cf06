"""Errors of the SDK: one class per kind of answer, so callers catch what they can handle.

Every error of an HTTP answer is an :class:`APIError` with the status, the service's message
(``detail``) and the answer's headers; transport failures that outlived the retries are
:class:`APIConnectionError`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from nerfsim_client._retry import parse_retry_after


class NerfsimError(Exception):
    """Base class of every error the SDK raises."""


class APIError(NerfsimError):
    """The service answered with an error status."""

    def __init__(self, status_code: int, message: str, detail: Any = None,
                 headers: Optional[Mapping[str, str]] = None, method: str = "", url: str = "") -> None:
        where = f" ({method} {url})" if method else ""
        super().__init__(f"HTTP {status_code}{where}: {message}")
        self.status_code = status_code
        self.message = message
        self.detail = detail
        """The answer's ``detail`` as the service sent it (a string, or FastAPI's list of field errors)."""
        self.headers = dict(headers or {})


class ValidationError(APIError):
    """400 or 422: the request or an uploaded file is invalid (the message names the field or file)."""


class AuthenticationError(APIError):
    """401: the API key is missing, malformed, unknown or revoked."""


class PermissionDeniedError(APIError):
    """403: the key may not do this."""


class NotFoundError(APIError):
    """404: no such asset, target, job or artifact for this key's tenant."""


class ConflictError(APIError):
    """409: the request contradicts the record's state (asset not ready, job already finished,
    an idempotency key reused for a different request)."""


class PayloadTooLargeError(APIError):
    """413: an upload over the service's size limits."""


class RateLimitError(APIError):
    """429 after the retries: the service asks to slow down."""

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds the service asked to wait (``Retry-After``), if it said."""
        return parse_retry_after(self.headers.get("retry-after"))


class ServerError(APIError):
    """5xx after the retries: the service failed."""


class ServiceUnavailableError(ServerError):
    """503 after the retries: the service (or its job store) is down for now."""


class APIConnectionError(NerfsimError):
    """The service could not be reached, or the connection broke, after the retries."""


class JobFailedError(NerfsimError):
    """A waited-for job ended ``failed``; ``job`` is its final record."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} failed: {job.error}")
        self.job = job


class AssetBuildError(NerfsimError):
    """A waited-for asset build ended ``failed``; ``asset`` is its record."""

    def __init__(self, asset: Any) -> None:
        super().__init__(f"asset {asset.id} ({asset.name}) failed to build: {asset.error}")
        self.asset = asset


class WaitTimeout(NerfsimError, TimeoutError):
    """``wait(timeout=...)`` ran out before the job or asset finished (it keeps running)."""


_BY_STATUS = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status_code: int) -> type[APIError]:
    """The error class of an HTTP status (5xx without its own class: :class:`ServerError`)."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError
