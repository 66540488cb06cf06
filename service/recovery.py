"""Startup recovery: nothing accepted is lost when Redis restarts empty or records were written
while it was down.

Records and keys are copied back from their files; every job still queued or running, and
every asset still building, that RQ no longer has waiting or running is enqueued again (it
resumes from its checkpoint); idempotency keys are restored from the job records.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from rq import Queue

from service.keys import KeyStore
from service.queue import BUILD_ASSET, RUN_JOB, enqueue
from service.records import RECORD_TYPES, RecordStore
from service.job_schemas import JobRecord
from service.schemas import AssetRecord
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def idempotency_key(tenant: str, key: str) -> str:
    return f"nerfsim:idempotency:{tenant}:{key}"


def recover(store: RecordStore, keys: KeyStore, queue: Queue, settings: ServiceSettings) -> dict[str, int]:
    """Restore Redis from the files and re-enqueue lost work; returns what was done."""
    done = {"keys": keys.reconcile(), "records": len(store.reconcile()), "requeued": 0}
    for kind, path in store.record_files():
        if kind not in ("job", "asset"):
            continue
        try:
            record = RECORD_TYPES[kind].model_validate_json(path.read_text())
        except (ValidationError, OSError):
            continue
        if isinstance(record, JobRecord):
            if record.idempotency_key:
                store.redis.set(idempotency_key(record.tenant, record.idempotency_key), record.id, nx=True)
            if record.status in ("queued", "running"):
                done["requeued"] += enqueue(queue, RUN_JOB, record.tenant, record.id, settings, f"job {record.id} (recovered)")
        elif isinstance(record, AssetRecord) and record.status == "building":
            done["requeued"] += enqueue(queue, BUILD_ASSET, record.tenant, record.id, settings, f"asset {record.id} (recovered)")
    if any(done.values()):
        log.info("recovered state from storage", extra=done)
    return done
