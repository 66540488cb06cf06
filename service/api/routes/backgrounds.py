"""Backgrounds: sets of photographs a tenant uploads for its jobs' scenes to be composed on
(a job names them by id). Every photo is decoded on upload; an unreadable one, or an upload
with none, is refused with 422 and leaves nothing behind. Stored as a flat folder of the
uploaded files, whose folder goes into a job's scene (service.job_config)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from service.api.deps import SettingsDep, StoreDep, TenantDep
from service.api.in_use import delete_unless_used
from service.content import save_upload, store_backgrounds
from service.schemas import BackgroundsListPublic, BackgroundsPublic, BackgroundsRecord, new_id
from service.storage import BACKGROUNDS_DIR, publish_dir

router = APIRouter(prefix="/backgrounds", tags=["backgrounds"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BackgroundsPublic)
async def create_backgrounds(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="zip or tar archive of photos, or a single photo "
                                                 "(.bmp, .jpeg, .jpg, .png, .webp)")],
    name: Annotated[str, Form(min_length=1, max_length=128)],
) -> BackgroundsRecord:
    """Upload a background photo set. Every photo is decoded; the first unreadable one answers
    422 naming it inside the upload, and so does an upload without any photo."""
    backgrounds_id = new_id("backgrounds")
    upload_name = file.filename or "upload"
    with store.storage.upload_scratch() as scratch:
        upload = await save_upload(file, scratch / "upload.bin", settings.max_upload_bytes)
        summary = await run_in_threadpool(store_backgrounds, upload, scratch, scratch / BACKGROUNDS_DIR, settings,
                                          upload_name)
        record = BackgroundsRecord(id=backgrounds_id, tenant=tenant, name=name, **summary)
        folder = store.storage.record_dir("backgrounds", tenant, backgrounds_id)
        folder.mkdir(parents=True)
        publish_dir(scratch / BACKGROUNDS_DIR, folder / BACKGROUNDS_DIR)
    return store.create(record)


@router.get("", response_model=BackgroundsListPublic)
def list_backgrounds(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> BackgroundsListPublic:
    records, count = store.list(BackgroundsRecord, tenant, offset, min(limit, settings.page_size_max))
    return BackgroundsListPublic(data=records, count=count)


@router.get("/{backgrounds_id}", response_model=BackgroundsPublic)
def get_backgrounds(backgrounds_id: str, tenant: TenantDep, store: StoreDep) -> BackgroundsRecord:
    return store.get(BackgroundsRecord, tenant, backgrounds_id)


@router.delete("/{backgrounds_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_backgrounds(backgrounds_id: str, tenant: TenantDep, store: StoreDep) -> None:
    """Delete a background set; refused while a queued or running job uses it."""
    record = store.get(BackgroundsRecord, tenant, backgrounds_id)
    delete_unless_used(store, record, f"backgrounds {backgrounds_id} are",
                       lambda job: backgrounds_id in job.spec.scene.backgrounds)
