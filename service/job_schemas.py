"""The jobs' schema family (see service.schemas): the request is the SDK's JobSpec
(nerfsim_client.spec, torch-free, shared with ``nerfsim optimize`` and the SDK) plus the checks
only the service makes: a known preset, and references that are record ids, never paths."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from nerfsim_client.spec import JobSpec
from pydantic import BaseModel, Field, model_validator

from optimizer.presets import DEFAULT_PRESET, PRESETS
from service.job_fields import drop_retired
from service.job_migration import is_flat, spec_from_flat
from service.schemas import JobStatus, Record

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
"""A preset's name (optimizer.presets.PRESETS): an unknown one is a 422 naming ``preset``."""
RECORD_IDS = {
    "scene.assets": r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
    "targets": r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
    "scene.backgrounds": r"backgrounds-[0-9a-f]{16}",
    "detector.weights": r"weights-[0-9a-f]{16}",
}
"""What each reference of a request must look like: a record id (an unknown one is a 404), so
no request can name a server path."""


class JobCreate(JobSpec):
    preset: PresetName = Field(DEFAULT_PRESET, description="The method preset (GET /v1/presets); settings in "
                                                           "`outer` win over it.")

    @model_validator(mode="after")
    def _record_ids(self) -> "JobCreate":
        references = {
            "scene.assets": self.scene.assets,
            "targets": [self.targets.val] + ([self.targets.test] if self.targets.test else []),
            "scene.backgrounds": self.scene.backgrounds,
            "detector.weights": [self.detector.weights] if self.detector.weights else [],
        }
        for field, values in references.items():
            for value in values:
                if not re.fullmatch(RECORD_IDS[field], value):
                    raise ValueError(f"{field}: {value!r} is not a record id (the service takes ids of uploaded "
                                     f"records; paths only work with nerfsim optimize)")
        return self


class JobAttempt(BaseModel):
    """One run of a job on a worker."""

    number: int
    """1 for the first run; a retry or a resumption after an interruption adds one."""
    started_at: dt.datetime
    resumed_from: int = 0
    """Outer iterations already done (checkpointed) when it started."""
    ended_at: dt.datetime | None = None
    reached: int | None = None
    """Outer iterations done when it ended."""
    stage: str | None = None
    """The loop's stage when it ended (optimizer.config.Stage)."""
    outcome: Literal["running", "interrupted", "failed", "succeeded", "cancelled"] = "running"
    reason: str | None = None
    """Why it ended early (an interruption or a failure)."""
    counted: bool = False
    """Whether it used up one of the service's retries: an attempt that ended without any
    progress did; one that checkpointed progress, or was stopped by a worker shutdown, did not."""


class JobPublic(BaseModel):
    id: str
    spec: JobSpec
    """What the job was asked to do: the request it was created with (the default preset filled in)."""
    preset: str
    """The method preset the job runs: the request's, else the service's default when it was accepted."""
    status: JobStatus
    attempts: int = 0
    """Runs started (interrupted ones included; see attempt_history)."""
    error: str | None = None
    """Why the job failed (None while it is queued or runs again after an interruption)."""
    attempt_history: list[JobAttempt] = Field(default_factory=list)
    """Every run of the job, in order."""
    progress: dict[str, Any] | None = None
    """The latest progress report (optimizer.config.Progress as a dict)."""
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Metrics of each outer iteration, in order."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Downloadable artifacts: name -> URL path."""
    cancel_requested: bool = False
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class JobRecord(Record, JobPublic):
    idempotency_key: str | None = None
    request_hash: str | None = None
    config: dict[str, Any] | None = None
    """The loop's settings as accepted (service.job_config.accepted_settings): what the worker
    runs, whatever a later nerfsim defaults to. None in a record stored before them, until its
    next run records the settings it runs."""

    @model_validator(mode="before")
    @classmethod
    def _stored_shapes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if is_flat(data):  # stored before the one job shape
                data = {**data, "spec": spec_from_flat(data)}
            if "spec" in data:
                data = {**data, "spec": drop_retired(data["spec"], JobSpec)}
            if "preset" not in data:  # stored before the field: the preset its settings or its request name
                named = [part.get("preset") for part in (data.get("config"), data.get("spec")) if isinstance(part, dict)]
                data = {**data, "preset": next((name for name in named if name), DEFAULT_PRESET)}
        return data


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
