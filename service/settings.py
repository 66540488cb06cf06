"""Service settings, read from the environment (``NERFSIM_*``; ``REDIS_URL`` as is).

One object configures the API, the workers and the CLI, so that every process of a deployment
agrees on where Redis is and where artifacts live.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Settings of the nerfsim service."""

    model_config = SettingsConfigDict(env_prefix="NERFSIM_", extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "NERFSIM_REDIS_URL"))
    """Redis (or Valkey) the API and the workers share. Unset: ``nerfsim serve`` starts an
    embedded server whose data lives under ``storage_root/redis``."""
    storage_root: Path = Path("nerfsim-data")
    """Local directory holding records and artifacts of every tenant."""
    artifact_mirror: str | None = None
    """Optional fsspec URL (``s3://bucket/prefix``, ...) to which finished artifacts are copied."""
    queue_name: str = "nerfsim"
    """RQ queue of closed-loop jobs and asset builds."""
    job_timeout_s: int = 6 * 3600
    """A job running longer than this is stopped by its worker."""
    job_retries: int = 2
    """Retries of a job whose worker died or raised an unexpected error without getting further
    than before (it resumes from its last checkpoint); an attempt that made progress, or that a
    worker shutdown stopped, uses none (service.attempts)."""
    heartbeat_interval_s: int = 10
    """How often a busy worker confirms it is alive."""
    heartbeat_grace_s: int = 60
    """A job whose worker missed heartbeats for this long past the interval is taken as
    abandoned, and retried."""
    maintenance_interval_s: int = 60
    """How often workers look for abandoned jobs."""
    worker_idle_poll_s: int = 20
    """Worker time-to-live when idle; it waits at most this long minus 15 s for a job at a time."""
    max_upload_bytes: int = 512 * MiB
    """Largest accepted upload (HTTP body)."""
    max_json_body_bytes: int = MiB
    """Largest accepted body of any other request (JSON): over it the API answers 413 without
    reading the rest."""
    worker_devices: list[Literal["cpu", "cuda"]] | None = None
    """Devices the workers can run jobs on; a job asking for another is refused (422). Unset:
    cpu, plus cuda when the API's own machine has a CUDA device, which is right for ``nerfsim
    serve`` (its workers run beside it); a deployment whose workers have GPUs the API lacks sets
    ``NERFSIM_WORKER_DEVICES='["cpu", "cuda"]'``."""
    max_extracted_bytes: int = 2048 * MiB
    """Largest total size of the files in an uploaded archive."""
    max_archive_files: int = 20_000
    """Most files in an uploaded archive."""
    max_compression_ratio: float = 200.0
    """An archive member expanding more than this many times its compressed size is refused
    (a zip bomb)."""
    max_background_images: int = 500
    """Most photos in an uploaded background set, and in all the sets of one job together (a
    job's worker holds them in memory, up to 512 pixels a side each)."""
    progress_stream_length: int = 10_000
    """Progress events kept per job (older ones are trimmed)."""
    rate_limit_per_s: float = 20.0
    """Requests a second each API key may make on average (0: no limit); over it the API
    answers 429 with ``Retry-After``."""
    rate_limit_burst: int = 100
    """Requests an API key may make at once before its rate limit applies."""
    page_size_max: int = 200
    """Largest page of a list request."""
    log_json: bool = True
    """Structured (JSON lines) logs; plain text when false."""
    threads: int = 1
    """Torch threads of a worker's job (CPU)."""


@lru_cache
def get_settings() -> ServiceSettings:
    """Settings from the environment (cached: one read per process)."""
    return ServiceSettings()
