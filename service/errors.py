"""Errors of the service: each carries the HTTP status the API answers with and a message
that names what was wrong (the file, the field, the record)."""

from __future__ import annotations


class ServiceError(ValueError):
    """A request the service cannot carry out."""

    status_code = 400


class InvalidField(ServiceError):
    """A request field whose value cannot be used: not offered by this deployment, or not fitting the
    request's other parts (the message names the field)."""

    status_code = 422


class UploadError(ServiceError):
    """An uploaded file or archive that is refused (unsafe, malformed or invalid content)."""

    status_code = 422


class UploadTooLarge(UploadError):
    """An upload or archive over the configured size limits."""

    status_code = 413


class NotFound(ServiceError):
    """No such record for this tenant (other tenants' records are not found either)."""

    status_code = 404


class Conflict(ServiceError):
    """The request contradicts the record's state (not ready, already finished, reused key)."""

    status_code = 409
