"""Weights: Ultralytics YOLO detection checkpoints a tenant uploads for its jobs' detectors to
start from (a job names them by id, never by a path). Each upload is read with the safe loader
of :mod:`detector.checkpoint` before anything is stored: a checkpoint that names anything but
Ultralytics detection layers is refused with 422 and leaves no file behind."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from service.api.deps import SettingsDep, StoreDep, TenantDep
from service.api.in_use import delete_unless_used
from service.content import check_weights, save_upload
from service.schemas import WeightsListPublic, WeightsPublic, WeightsRecord, new_id
from service.storage import WEIGHTS_FILE

router = APIRouter(prefix="/weights", tags=["weights"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WeightsPublic)
async def create_weights(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="Ultralytics YOLO detection checkpoint (.pt)")],
    name: Annotated[str, Form(min_length=1, max_length=128)],
) -> WeightsRecord:
    """Upload detector weights. The checkpoint must hold a YOLOv8 / YOLO11 / YOLO26 detection model
    (saved by Ultralytics' trainer or by nerfsim); anything else answers 422 naming the problem."""
    weights_id = new_id("weights")
    upload_name = file.filename or "upload"
    with store.storage.upload_scratch() as scratch:
        upload = await save_upload(file, scratch / WEIGHTS_FILE, settings.max_upload_bytes)
        summary = await run_in_threadpool(check_weights, upload, upload_name)
        record = WeightsRecord(id=weights_id, tenant=tenant, name=name, size_bytes=upload.stat().st_size, **summary)
        weights_dir = store.storage.record_dir("weights", tenant, weights_id)
        weights_dir.mkdir(parents=True)
        os.replace(upload, weights_dir / WEIGHTS_FILE)  # scratch is on the same filesystem: one rename
    return store.create(record)


@router.get("", response_model=WeightsListPublic)
def list_weights(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> WeightsListPublic:
    records, count = store.list(WeightsRecord, tenant, offset, min(limit, settings.page_size_max))
    return WeightsListPublic(data=records, count=count)


@router.get("/{weights_id}", response_model=WeightsPublic)
def get_weights(weights_id: str, tenant: TenantDep, store: StoreDep) -> WeightsRecord:
    return store.get(WeightsRecord, tenant, weights_id)


@router.delete("/{weights_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_weights(weights_id: str, tenant: TenantDep, store: StoreDep) -> None:
    """Delete weights; refused while a queued or running job starts from them."""
    record = store.get(WeightsRecord, tenant, weights_id)
    delete_unless_used(store, record, f"weights {weights_id} are", lambda job: job.spec.detector.weights == weights_id)
