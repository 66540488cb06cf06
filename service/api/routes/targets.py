"""Targets: labelled real image sets (COCO or YOLO, zipped) that a job tunes its data to
(validation) or measures the final detector on (test). Validated completely on upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api.deps import SettingsDep, StoreDep, TenantDep
from service.api.in_use import delete_unless_used
from service.content import check_target, extract_upload, save_upload
from service.errors import UploadError
from service.schemas import TargetFormat, TargetPublic, TargetRecord, TargetRole, TargetsPublic, new_id
from service.storage import publish_dir

router = APIRouter(prefix="/targets", tags=["targets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TargetPublic)
async def create_target(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="zip or tar archive of a COCO or YOLO labelled set")],
    name: Annotated[str, Form()],
    role: Annotated[TargetRole, Form()] = "validation",
    format: Annotated[TargetFormat | None, Form(description="coco or yolo (default: detected)")] = None,
) -> TargetRecord:
    """Upload a labelled set. Every image is decoded and every box checked; the first problem
    found is answered with 422 and names the file inside the upload."""
    target_id = new_id("target")
    upload_name = file.filename or "upload"
    with store.storage.upload_scratch() as scratch:
        archive = await save_upload(file, scratch / "upload.bin", settings.max_upload_bytes)
        extracted = await run_in_threadpool(extract_upload, archive, scratch / "data", settings, upload_name)
        fmt, data_path, summary = await run_in_threadpool(check_target, extracted, upload_name, format)
        try:
            record = TargetRecord(id=target_id, tenant=tenant, name=name, role=role, format=fmt,
                                  data_path=f"data/{data_path.relative_to(extracted).as_posix()}",
                                  **summary)
        except ValidationError as error:
            raise UploadError(f"{error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}") from error
        target_dir = store.storage.record_dir("target", tenant, target_id)
        target_dir.mkdir(parents=True)
        publish_dir(extracted, target_dir / "data")
    return store.create(record)


@router.get("", response_model=TargetsPublic)
def list_targets(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    role: TargetRole | None = None,
) -> TargetsPublic:
    where = (lambda r: r.role == role) if role else None
    records, count = store.list(TargetRecord, tenant, offset, min(limit, settings.page_size_max), where)
    return TargetsPublic(data=records, count=count)


@router.get("/{target_id}", response_model=TargetPublic)
def get_target(target_id: str, tenant: TenantDep, store: StoreDep) -> TargetRecord:
    return store.get(TargetRecord, tenant, target_id)


@router.delete("/{target_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_target(target_id: str, tenant: TenantDep, store: StoreDep) -> None:
    """Delete a target set; refused while a queued or running job uses it."""
    record = store.get(TargetRecord, tenant, target_id)
    delete_unless_used(store, record, f"target {target_id} is",
                       lambda job: target_id in (job.spec.targets.val, job.spec.targets.test))
