"""The RQ queue of closed-loop jobs and asset builds: enqueueing (idempotent: a job id is
enqueued once however often it is asked), cancelling, and its depth."""

from __future__ import annotations

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from service.settings import ServiceSettings

RUN_JOB = "service.tasks.run_job"
BUILD_ASSET = "service.asset_tasks.build_asset"
ON_FAILURE = "service.tasks.on_failure"
_ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def get_queue(connection: redis.Redis, settings: ServiceSettings) -> Queue:
    return Queue(settings.queue_name, connection=connection)


def is_active(connection: redis.Redis, rq_id: str) -> bool:
    """Whether RQ still has ``rq_id`` waiting or running."""
    try:
        return Job.fetch(rq_id, connection=connection).get_status() in _ACTIVE
    except NoSuchJobError:
        return False


def enqueue(queue: Queue, function: str, tenant: str, record_id: str, settings: ServiceSettings,
            description: str) -> bool:
    """Run ``function(tenant, record_id)`` on a worker, unless it is already waiting or running
    (then False). The RQ job id is the record id."""
    if is_active(queue.connection, record_id):
        return False
    queue.enqueue(
        function, tenant, record_id,
        job_id=record_id,
        job_timeout=settings.job_timeout_s,
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        on_failure=Callback(ON_FAILURE),
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=description,
    )
    return True


def enqueue_again(queue: Queue, function: str, tenant: str, record_id: str, settings: ServiceSettings,
                  description: str) -> bool:
    """Like :func:`enqueue`, for a record whose RQ job has ended (failed, finished or cancelled):
    RQ's record of that run goes first, so the new run starts with all its retries."""
    if is_active(queue.connection, record_id):
        return False
    try:
        Job.fetch(record_id, connection=queue.connection).delete()
    except NoSuchJobError:
        pass
    return enqueue(queue, function, tenant, record_id, settings, description)


def cancel_queued(connection: redis.Redis, rq_id: str) -> bool:
    """Take a job that has not started off the queue; False if it has started (or is gone)."""
    try:
        job = Job.fetch(rq_id, connection=connection)
    except NoSuchJobError:
        return False
    if job.get_status() not in {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}:
        return False
    job.cancel()
    return True
