"""Records that queued or running jobs depend on (assets, targets, weights, background sets)
cannot be deleted under them."""

from __future__ import annotations

from collections.abc import Callable

from service.errors import Conflict
from service.records import RecordStore
from service.job_schemas import JobRecord
from service.schemas import Record


def delete_unless_used(store: RecordStore, record: Record, what: str, uses: Callable[[JobRecord], bool]) -> None:
    """Delete ``record`` unless a queued or running job of its tenant ``uses`` it; else a
    :class:`Conflict` naming the job (``what``: the record as the message names it, with its verb)."""
    users, _ = store.list(JobRecord, record.tenant, 0, 1, lambda job: uses(job) and job.status in ("queued", "running"))
    if users:
        raise Conflict(f"{what} used by job {users[0].id}, which is {users[0].status}")
    store.delete(record)
