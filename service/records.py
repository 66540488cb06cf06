"""Tenant-scoped records in Redis, each also written beside its artifacts.

Redis holds the live copy (``nerfsim:record:<kind>:<id>``, JSON) and a per-tenant index
(sorted by creation time) for listing; ``record.json`` in the record's folder is the durable
copy. Every read names the tenant: a record of another tenant is "not found". Updates are
optimistic transactions (WATCH/MULTI), so the API cancelling a job and the worker reporting
progress never overwrite each other. ``reconcile`` restores Redis from the files (after Redis
lost data, or when records were written while it was down).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import redis
from pydantic import ValidationError

from service.errors import NotFound
from service.job_schemas import JobRecord
from service.schemas import AssetRecord, BackgroundsRecord, Record, TargetRecord, WeightsRecord, utcnow
from service.storage import RECORD_FILE, Storage, kind_folder, remove_dir, write_json_atomic

log = logging.getLogger(__name__)

RecordT = TypeVar("RecordT", bound=Record)
RECORD_TYPES: dict[str, type[Record]] = {"asset": AssetRecord, "target": TargetRecord, "job": JobRecord,
                                         "weights": WeightsRecord, "backgrounds": BackgroundsRecord}


def kind_of(record: Record) -> str:
    return next(kind for kind, record_type in RECORD_TYPES.items() if isinstance(record, record_type))


def record_key(kind: str, record_id: str) -> str:
    return f"nerfsim:record:{kind}:{record_id}"


def index_key(kind: str, tenant: str) -> str:
    return f"nerfsim:index:{kind}:{tenant}"


class RecordStore:
    """Records of all tenants: Redis plus ``record.json`` files under the storage root."""

    def __init__(self, connection: redis.Redis, storage: Storage) -> None:
        self.redis = connection
        self.storage = storage

    # ---------------------------------------------------------------------------------------
    # reading

    def get(self, record_type: type[RecordT], tenant: str, record_id: str) -> RecordT:
        """The record ``record_id`` of ``tenant`` (NotFound for another tenant's record)."""
        kind = next(k for k, t in RECORD_TYPES.items() if t is record_type)
        raw = self.redis.get(record_key(kind, record_id))
        if raw is None:
            # Written while Redis was unreachable, or Redis lost it: the file is authoritative.
            path = self.storage.record_file(kind, tenant, record_id) if _safe_id(record_id) else None
            if path is None or not path.is_file():
                raise NotFound(f"{kind} {record_id} not found")
            record = record_type.model_validate_json(path.read_text())
            self._cache(record)
            return record
        record = record_type.model_validate_json(raw)
        if record.tenant != tenant:
            raise NotFound(f"{kind} {record_id} not found")
        return record

    def list(
        self, record_type: type[RecordT], tenant: str, offset: int = 0, limit: int = 50,
        where: Callable[[RecordT], bool] | None = None,
    ) -> tuple[list[RecordT], int]:
        """A page of ``tenant``'s records, newest first, and how many match in all."""
        kind = next(k for k, t in RECORD_TYPES.items() if t is record_type)
        ids = self.redis.zrevrange(index_key(kind, tenant), 0, -1)
        if where is None:
            page_ids, count = ids[offset : offset + limit], len(ids)
            raws = self.redis.mget([record_key(kind, i.decode()) for i in page_ids]) if page_ids else []
            return [record_type.model_validate_json(r) for r in raws if r is not None], count
        matching = [r for r in self._all(record_type, kind, ids) if where(r)]
        return matching[offset : offset + limit], len(matching)

    def _all(self, record_type: type[RecordT], kind: str, ids: list[bytes]) -> Iterator[RecordT]:
        for start in range(0, len(ids), 500):
            keys = [record_key(kind, i.decode()) for i in ids[start : start + 500]]
            for raw in self.redis.mget(keys):
                if raw is not None:
                    yield record_type.model_validate_json(raw)

    # ---------------------------------------------------------------------------------------
    # writing

    def create(self, record: RecordT) -> RecordT:
        """Store a new record (file first: Redis never lists a record without its file)."""
        record.revision = 1
        self._write_file(record)
        self._cache(record)
        return record

    def update(self, record_type: type[RecordT], tenant: str, record_id: str,
               change: Callable[[RecordT], None]) -> RecordT:
        """Apply ``change`` to the current record atomically (retried if another process
        updated it meanwhile) and store the result."""
        kind = next(k for k, t in RECORD_TYPES.items() if t is record_type)
        key = record_key(kind, record_id)
        self.get(record_type, tenant, record_id)  # tenant check, and restore from file if needed
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"{kind} {record_id} not found")
                    record = record_type.model_validate_json(raw)
                    change(record)
                    record.revision += 1
                    record.updated_at = utcnow()
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._write_file(record)
        return record

    def delete(self, record: Record) -> None:
        """Remove the record and its folder (artifacts included)."""
        kind = kind_of(record)
        remove_dir(self.storage.record_dir(kind, record.tenant, record.id))
        with self.redis.pipeline() as pipe:
            pipe.delete(record_key(kind, record.id))
            pipe.zrem(index_key(kind, record.tenant), record.id)
            pipe.execute()

    def _cache(self, record: Record) -> None:
        kind = kind_of(record)
        with self.redis.pipeline() as pipe:
            pipe.set(record_key(kind, record.id), record.model_dump_json())
            pipe.zadd(index_key(kind, record.tenant), {record.id: record.created_at.timestamp()})
            pipe.execute()

    def _write_file(self, record: Record) -> None:
        path = self.storage.record_file(kind_of(record), record.tenant, record.id)
        write_json_atomic(path, json.loads(record.model_dump_json()))

    # ---------------------------------------------------------------------------------------
    # recovery

    def record_files(self) -> Iterator[tuple[str, Path]]:
        """Every ``record.json`` under the storage root, with its kind."""
        tenants = self.storage.tenants_dir()
        if not tenants.is_dir():
            return
        for kind in RECORD_TYPES:
            for path in tenants.glob(f"*/{kind_folder(kind)}/*/{RECORD_FILE}"):
                yield kind, path

    def reconcile(self) -> list[Record]:
        """Put back into Redis every record whose file is newer than Redis' copy (or that Redis
        does not have); returns the records restored."""
        restored = []
        for kind, path in self.record_files():
            try:
                record = RECORD_TYPES[kind].model_validate_json(path.read_text())
            except (ValidationError, OSError) as error:
                log.warning("skipping unreadable record file", extra={"path": str(path), "error": str(error)})
                continue
            raw = self.redis.get(record_key(kind, record.id))
            if raw is not None and json.loads(raw).get("revision", 0) >= record.revision:
                continue
            self._cache(record)
            restored.append(record)
        if restored:
            log.info("restored records from files", extra={"count": len(restored)})
        return restored


def _safe_id(record_id: str) -> bool:
    """Ids are generated (``kind-hex``); anything else never names a folder."""
    return record_id.replace("-", "").isalnum() and len(record_id) <= 64
