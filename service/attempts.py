"""A job's attempts: which ones use up a retry, and what a person reads about them.

Retries count failures, not interruptions. An attempt that ended early uses up one of the
service's ``job_retries`` only when it made no progress: it did not get further - more outer
iterations done (each is checkpointed before it is reported), or a later stage - than any
attempt before it. Progress is bounded (iterations, then stages), so a job that keeps dying
still ends; a job that dies at the same point every time fails after ``job_retries`` retries.
An attempt stopped by a worker shutdown (SIGTERM) never counts, and one that ran past the job
timeout always does (the timeout bounds a job, however far it got).
"""

from __future__ import annotations

from typing import get_args

from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from optimizer.config import Stage
from service.interruption import WorkerStopping
from service.job_schemas import JobAttempt, JobRecord
from service.schemas import utcnow

STAGES: tuple[str, ...] = get_args(Stage)
"""The loop's stages in the order a run goes through them."""


def iterations_done(record: JobRecord) -> int:
    """Outer iterations the job has reported (each was checkpointed before its report)."""
    return len({entry.get("iteration") for entry in record.history})


def _stage(record: JobRecord) -> str | None:
    return (record.progress or {}).get("stage")


def _mark(iterations: int, stage: str | None) -> tuple[int, int]:
    return iterations, STAGES.index(stage) if stage in STAGES else -1


def start_attempt(record: JobRecord) -> None:
    """Count a new attempt (in a record update)."""
    record.attempts += 1
    record.started_at = record.started_at or utcnow()
    record.attempt_history.append(JobAttempt(number=record.attempts, started_at=utcnow(),
                                             resumed_from=iterations_done(record)))


def current_attempt(record: JobRecord) -> JobAttempt | None:
    """The attempt that is running, if any."""
    if record.attempt_history and record.attempt_history[-1].outcome == "running":
        return record.attempt_history[-1]
    return None


def made_progress(record: JobRecord) -> bool:
    """Whether the running attempt got further than every attempt before it."""
    attempt = current_attempt(record)
    if attempt is None:
        return False
    before = [_mark(attempt.resumed_from, "setup")]  # every attempt reports its setup first
    before += [_mark(a.reached or 0, a.stage) for a in record.attempt_history[:-1]]
    return _mark(iterations_done(record), _stage(record)) > max(before)


def end_attempt(record: JobRecord, outcome: str, reason: str | None = None, counted: bool = False) -> None:
    """Close the running attempt (in a record update)."""
    attempt = current_attempt(record)
    if attempt is None:
        return
    attempt.outcome, attempt.reason, attempt.counted = outcome, reason, counted
    attempt.ended_at, attempt.reached, attempt.stage = utcnow(), iterations_done(record), _stage(record)


def cause(exc_type: type[BaseException] | None, exc_value: BaseException | None, timeout_s: int) -> str:
    """What ended an attempt, in words."""
    if exc_type is None or issubclass(exc_type, AbandonedJobError):
        return "the worker stopped responding (killed, or out of memory)"
    if issubclass(exc_type, WorkerStopping):
        return "the worker was shut down"
    if issubclass(exc_type, JobTimeoutException):
        return f"the attempt ran past the job time limit ({timeout_s} s)"
    return f"{exc_type.__name__}: {exc_value}" if str(exc_value) else exc_type.__name__


def counts_as_failure(record: JobRecord, exc_type: type[BaseException] | None) -> bool:
    """Whether the attempt that ended with ``exc_type`` uses up a retry."""
    if exc_type is not None and issubclass(exc_type, WorkerStopping):
        return False
    if exc_type is not None and issubclass(exc_type, JobTimeoutException):
        return True
    return not made_progress(record)


def describe(record: JobRecord, what: str) -> str:
    """``what`` happened during the running attempt, with how far that attempt got."""
    attempt = current_attempt(record)
    number = attempt.number if attempt else record.attempts
    total = record.spec.budget.outer_iterations
    where = f"outer iteration {iterations_done(record)} of {total} done"
    if attempt is not None and attempt.resumed_from:
        where = f"resumed from outer iteration {attempt.resumed_from}, {where}"
    return f"{what} during attempt {number} ({where})"
