"""Jobs: closed-loop runs that tune a scene-parameter distribution to a target set and deliver
the dataset, the learned distribution, the detector and a report."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from nerfsim_client.spec import JobSpec

from service.api.deps import AsyncRedisDep, QueueDep, SettingsDep, StoreDep, TenantDep
from service.api.responses import STREAM_ERROR_RESPONSES
from service.errors import Conflict, InvalidField, NotFound, ServiceError
from service.events import cancel_key, decode, events_key, publish
from service.job_config import check_spec
from service.job_fields import worker_devices
from service.job_schemas import JobCreate, JobPublic, JobRecord, JobsPublic
from service.queue import RUN_JOB, cancel_queued, enqueue
from service.recovery import idempotency_key
from service.schemas import (
    TERMINAL_STATUSES,
    AssetRecord,
    BackgroundsRecord,
    JobStatus,
    TargetRecord,
    WeightsRecord,
    new_id,
)
from service.tasks import ARTIFACTS_DIR, WORK_DIR

router = APIRouter(prefix="/jobs", tags=["jobs"])

FILE_CONTENT = {"content": {**{media: {"schema": {"type": "string", "format": "binary"}}
                            for media in ("application/zip", "application/octet-stream", "image/png", "image/jpeg")},
                            "application/json": {"schema": {}}}}
"""Media types of downloaded files (by their suffix; JSON files hold any JSON)."""


def _check_references(job: JobSpec, tenant: str, store, settings, accepted: dict | None = None) -> dict:
    """Assets ready, names unique, targets of the right role and classes the assets provide, a
    device the workers offer, settings the loop takes (``accepted``: a job's recorded ones);
    returns the settings to record (service.job_config.check_spec)."""
    offered = worker_devices(settings)
    if job.device not in ("auto", *offered):
        raise InvalidField(f"device: {job.device!r} is not offered by this deployment's workers (they offer "
                           f"{['auto', *offered]}; NERFSIM_WORKER_DEVICES lists them)")
    assets = [store.get(AssetRecord, tenant, asset_id) for asset_id in job.scene.assets]
    for asset in assets:
        if asset.status != "ready":
            raise Conflict(f"asset {asset.id} is {asset.status}, not ready")
    names = [a.name for a in assets]
    if len(set(names)) != len(names):
        raise ServiceError(f"scene.assets: class names must be unique, got {names}")
    for field, target_id, roles in (("targets.val", job.targets.val, ("validation", "both")),
                                    ("targets.test", job.targets.test, ("test", "both"))):
        if target_id is None:
            continue
        target = store.get(TargetRecord, tenant, target_id)
        if target.role not in roles:
            raise ServiceError(f"{field}: target {target_id} was uploaded as a {target.role} set")
        unknown = sorted(set(target.class_names) - set(names))
        if unknown:
            raise ServiceError(f"{field}: target {target_id} has classes {unknown} that no asset provides "
                               f"(asset classes: {names})")
    if job.detector.weights is not None:
        _check_weights(job.detector.weights, names, tenant, store)
    _check_backgrounds(job.scene.backgrounds, tenant, store, settings.max_background_images)
    return check_spec(job, accepted)  # the loop's own checks, so a bad job fails here, not later


def _check_weights(weights_id: str, asset_names: list[str], tenant: str, store) -> None:
    """The weights are the tenant's (another tenant's id is not found, like a missing one) and
    share a class with the assets: with none in common, no class-logit row carries over."""
    weights = store.get(WeightsRecord, tenant, weights_id)
    if not set(weights.class_names) & set(asset_names):
        raise InvalidField(f"detector.weights: weights {weights_id} have classes {weights.class_names}, none of "
                            f"which is an asset's class (asset classes: {asset_names})")


def _check_backgrounds(backgrounds_ids: list[str], tenant: str, store, max_images: int) -> None:
    """The background sets are the tenant's (another tenant's id is not found, like a missing
    one) and hold at most ``max_images`` photos together (the worker holds them in memory)."""
    images = sum(store.get(BackgroundsRecord, tenant, backgrounds_id).num_images for backgrounds_id in backgrounds_ids)
    if images > max_images:
        raise InvalidField(f"scene.backgrounds: the sets hold {images} photos together, more than the limit of "
                           f"{max_images} per job")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    job: JobCreate,
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key_header: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JobRecord:
    """Create and enqueue a job. With an ``Idempotency-Key``, repeating the request returns the
    job it created (200) instead of creating another; the same key with a different request is
    a conflict (409)."""
    accepted = _check_references(job, tenant, store, settings)
    request_hash = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
    job_id = new_id("job")
    if idempotency_key_header:
        key = idempotency_key(tenant, idempotency_key_header)
        if not store.redis.set(key, job_id, nx=True):
            existing = _await_existing(store, tenant, key)
            if existing.request_hash != request_hash:
                raise Conflict("Idempotency-Key was used for a different request")
            response.status_code = status.HTTP_200_OK
            return existing
    record = JobRecord(id=job_id, tenant=tenant, status="queued", idempotency_key=idempotency_key_header,
                       request_hash=request_hash, spec=job.model_dump(), preset=job.preset, config=accepted)
    store.create(record)
    publish(store.redis, job_id, "status", {"status": "queued"}, settings.progress_stream_length)
    enqueue(queue, RUN_JOB, tenant, job_id, settings, description=f"job {job_id}")
    return record


def _await_existing(store, tenant: str, key: str) -> JobRecord:
    """The job an idempotency key points to (its creator may still be writing it)."""
    deadline = time.monotonic() + 5.0
    while True:
        job_id = store.redis.get(key).decode()
        try:
            return store.get(JobRecord, tenant, job_id)
        except NotFound:
            if time.monotonic() > deadline:
                raise Conflict("a request with this Idempotency-Key is still being processed") from None
            time.sleep(0.05)


@router.get("", response_model=JobsPublic)
def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: JobStatus | None = None,
    asset: str | None = None,
    target: str | None = None,
) -> JobsPublic:
    """Jobs, newest first, optionally only those with a status, an asset or a target."""
    where = None
    if status or asset or target:
        def where(j: JobRecord) -> bool:
            return ((status is None or j.status == status) and (asset is None or asset in j.spec.scene.assets)
                    and (target is None or target in (j.spec.targets.val, j.spec.targets.test)))
    records, count = store.list(JobRecord, tenant, offset, min(limit, settings.page_size_max), where)
    return JobsPublic(data=records, count=count)


PRIVATE_JOB_FIELDS = set(JobRecord.model_fields) - set(JobPublic.model_fields)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    """Status, latest progress and metric history of a job."""
    # The most frequent request: serialised once, without FastAPI validating the record again.
    record = store.get(JobRecord, tenant, job_id)
    return Response(record.model_dump_json(exclude=PRIVATE_JOB_FIELDS), media_type="application/json")


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> JobRecord:
    """Cancel a job: a queued one at once, a running one at its next check (it then keeps what
    it produced). Cancelling a finished job is a conflict."""
    record = store.get(JobRecord, tenant, job_id)
    if record.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} already {record.status}")
    store.redis.set(cancel_key(job_id), "1", ex=7 * 24 * 3600)

    def request(current: JobRecord) -> None:
        current.cancel_requested = True

    record = store.update(JobRecord, tenant, job_id, request)
    if record.status == "queued" and cancel_queued(store.redis, job_id):
        def cancelled(current: JobRecord) -> None:
            if current.status == "queued":
                current.status = "cancelled"

        record = store.update(JobRecord, tenant, job_id, cancelled)
        if record.status == "cancelled":
            publish(store.redis, job_id, "status", {"status": "cancelled"}, settings.progress_stream_length)
    return record


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: str, tenant: TenantDep, store: StoreDep) -> None:
    """Delete a finished job and its artifacts (cancel a running one first)."""
    record = store.get(JobRecord, tenant, job_id)
    if record.status not in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} is {record.status}; cancel it first")
    store.delete(record)
    store.redis.delete(events_key(job_id), cancel_key(job_id))
    if record.idempotency_key:
        store.redis.delete(idempotency_key(tenant, record.idempotency_key))


def owned_job(job_id: str, tenant: TenantDep, store: StoreDep) -> JobRecord:
    """The job ``job_id`` of the caller's tenant (resolved before a streamed answer starts, so
    that a missing job is a plain 404)."""
    return store.get(JobRecord, tenant, job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=STREAM_ERROR_RESPONSES)
async def job_events(
    job_id: str,
    request: Request,
    record: Annotated[JobRecord, Depends(owned_job)],
    tenant: TenantDep,
    store: StoreDep,
    connection: AsyncRedisDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events of a job, in order: ``status`` (queued, running, succeeded, failed,
    cancelled; retries show as queued again) and ``progress`` (optimizer.config.Progress).
    Each event's id is its position: reconnect with ``Last-Event-ID`` to continue. The stream
    ends after the job's final status."""
    position = last_event_id or "0-0"
    key = events_key(job_id)
    finished = record.status in TERMINAL_STATUSES
    while not await request.is_disconnected():
        try:
            batch = await connection.xread({key: position}, count=100, block=1000)
        except redis.ConnectionError:
            await asyncio.sleep(1.0)
            continue
        entries = batch[0][1] if batch else []
        for entry_id, fields in entries:
            position = entry_id.decode()
            event, data = decode(fields)
            yield ServerSentEvent(event=event, id=position, data=data)
            if event == "status" and data.get("status") in TERMINAL_STATUSES:
                return
        if not entries and finished:
            # The job ended before its final event could be written (or events expired).
            final = await run_in_threadpool(store.get, JobRecord, tenant, job_id)
            yield ServerSentEvent(event="status", data={"status": final.status, "error": final.error})
            return
        if not entries:
            finished = (await run_in_threadpool(store.get, JobRecord, tenant, job_id)).status in TERMINAL_STATUSES


@router.get("/{job_id}/artifacts")
def list_artifacts(job_id: str, tenant: TenantDep, store: StoreDep) -> dict[str, str]:
    """Artifact name -> download path (empty until the job ends)."""
    return store.get(JobRecord, tenant, job_id).artifacts


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, responses={200: FILE_CONTENT})
def get_artifact(job_id: str, name: str, tenant: TenantDep, store: StoreDep) -> FileResponse:
    """An artifact: ``dataset.zip`` (images, COCO annotations.json, YOLO labels/ and data.yaml),
    ``psi.json``, ``detector.pt``, ``report.json`` and its plots, ``samples.zip``."""
    record = store.get(JobRecord, tenant, job_id)
    if name not in record.artifacts:
        raise NotFound(f"job {job_id} has no artifact {name!r} (it has {sorted(record.artifacts)})")
    path = store.storage.record_dir("job", tenant, job_id) / ARTIFACTS_DIR / name
    return FileResponse(path, filename=name)


@router.get("/{job_id}/files/{path:path}", response_class=FileResponse, responses={200: FILE_CONTENT})
def get_work_file(job_id: str, path: str, tenant: TenantDep, store: StoreDep) -> FileResponse:
    """A file the running job has written (the sample images that progress events point to)."""
    store.get(JobRecord, tenant, job_id)
    work = (store.storage.record_dir("job", tenant, job_id) / WORK_DIR).resolve()
    file = (work / path).resolve()
    if not file.is_relative_to(work) or file.suffix.lower() not in {".png", ".jpg", ".json"} or not file.is_file():
        raise NotFound(f"job {job_id} has no file {path!r}")
    return FileResponse(file)


RETRYABLE = ("failed", "cancelled")


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def retry_job(job_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep, settings: SettingsDep) -> JobRecord:
    """Run a failed or cancelled job again, with the service's retries anew: it resumes from its
    last checkpoint (the outer iterations it completed are not redone). Its event stream starts
    over. A job in any other state is a conflict."""
    from service.queue import enqueue_again, is_active

    record = store.get(JobRecord, tenant, job_id)
    if record.status not in RETRYABLE:
        raise Conflict(f"job {job_id} is {record.status}; only a failed or cancelled job can be retried")
    if is_active(store.redis, job_id):
        raise Conflict(f"job {job_id} is still being wound up by its worker; retry it in a few seconds")
    # Its assets, targets, weights or backgrounds may be gone.
    _check_references(record.spec, tenant, store, settings, record.config)

    def again(current: JobRecord) -> None:
        if current.status not in RETRYABLE:  # (another request retried it meanwhile)
            raise Conflict(f"job {job_id} is {current.status}; only a failed or cancelled job can be retried")
        current.status, current.error, current.cancel_requested, current.finished_at = "queued", None, False, None

    record = store.update(JobRecord, tenant, job_id, again)
    store.redis.delete(cancel_key(job_id))
    store.redis.delete(events_key(job_id))
    publish(store.redis, job_id, "status", {"status": "queued", "retry": True}, settings.progress_stream_length)
    enqueue_again(queue, RUN_JOB, tenant, job_id, settings, f"job {job_id} (retried)")
    return record
