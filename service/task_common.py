"""What both kinds of worker task share: the worker's settings, records and Redis, a
cancellation flag, and RQ's retry bookkeeping."""

from __future__ import annotations

import time

import redis
from rq import get_current_job

from service.events import cancel_key
from service.records import RecordStore
from service.settings import ServiceSettings, get_settings
from service.storage import Storage


def task_context(connection: redis.Redis | None = None) -> tuple[ServiceSettings, RecordStore, redis.Redis]:
    """The worker's settings, record store and Redis (the current RQ job's unless given)."""
    settings = get_settings()
    if connection is None:
        connection = get_current_job().connection
    return settings, RecordStore(connection, Storage(settings.storage_root, settings.artifact_mirror)), connection


class CancelFlag:
    """A job's (or an asset build's) cancellation flag, read at most once a second: the loop's
    ``should_stop``, and what the interruption watcher polls."""

    def __init__(self, connection: redis.Redis, job_id: str) -> None:
        self.connection, self.key = connection, cancel_key(job_id)
        self.checked_at, self.cancelled = 0.0, False

    def __call__(self) -> bool:
        if not self.cancelled and time.monotonic() - self.checked_at > 1.0:
            self.checked_at = time.monotonic()
            try:
                self.cancelled = bool(self.connection.exists(self.key))
            except redis.RedisError:
                pass
        return self.cancelled


def give_back_retry(job) -> None:
    """The attempt that just ended uses no retry: RQ takes one off as it re-queues the job (its
    failure callback runs before it decides), so one is added here."""
    job.retries_left = (job.retries_left or 0) + 1
