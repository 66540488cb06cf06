"""Assets: objects of the scene, uploaded as a nerfstudio checkpoint, a posed image set, a
textured mesh, a ready nerfsim asset (an archive of each) or a 3D Gaussian splat (a ``.ply``, bare
or archived). Uploads that need work (training, baking, rendering, loading a checkpoint, putting
a splat into the object frame) become asset-building jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api.deps import QueueDep, SettingsDep, StoreDep, TenantDep
from service.api.in_use import delete_unless_used
from service.content import check_asset, save_upload, unpack_asset_upload
from service.errors import Conflict, UploadError
from service.queue import BUILD_ASSET, enqueue
from service.schemas import AssetBuild, AssetKind, AssetPublic, AssetRecord, AssetsPublic, AssetStatus, new_id
from service.storage import publish_dir

router = APIRouter(prefix="/assets", tags=["assets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AssetPublic)
async def create_asset(
    tenant: TenantDep,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="zip or tar archive of the asset's files (a splat: or its .ply)")],
    name: Annotated[str, Form(description="Class name of the object")],
    kind: Annotated[AssetKind, Form()],
    build: Annotated[str, Form(description="AssetBuild as JSON (the uploads that are built)")] = "{}",
) -> AssetRecord:
    """Upload an asset. A ``nerfsim`` asset folder (NeRF or splat) is usable at once, unless
    ``build.representation`` asks to bake a NeRF into a splat; the others are built by a worker
    (``status`` goes from ``building`` to ``ready`` or ``failed``)."""
    from renderer.splat_asset import is_splat_asset  # lazy: the API starts without torch

    try:
        build_settings = AssetBuild.model_validate_json(build)
    except ValidationError as error:
        first = error.errors()[0]
        raise UploadError(f"{'.'.join(map(str, ('build', *first['loc'])))}: {first['msg']}") from error
    asset_id = new_id("asset")
    upload_name = file.filename or "upload"
    with store.storage.upload_scratch() as scratch:
        archive = await save_upload(file, scratch / "upload.bin", settings.max_upload_bytes)
        extracted = await run_in_threadpool(unpack_asset_upload, archive, scratch / "files", settings, upload_name, kind)
        source = await run_in_threadpool(check_asset, extracted, upload_name, kind)
        ready = kind == "nerfsim" and (build_settings.representation == "nerf" or is_splat_asset(source))
        try:
            record = AssetRecord(id=asset_id, tenant=tenant, name=name, kind=kind, build=build_settings,
                                 status="ready" if ready else "building")
        except ValidationError as error:
            raise UploadError(f"name: {error.errors()[0]['msg']}") from error
        asset_dir = store.storage.record_dir("asset", tenant, asset_id)
        asset_dir.mkdir(parents=True)
        publish_dir(extracted, asset_dir / "upload")
        relative = source.relative_to(extracted)
        if ready:
            record.object_path = (asset_dir / "upload" / relative).relative_to(asset_dir).as_posix()
        record.details = {"source": f"upload/{relative.as_posix()}", "upload": upload_name}
    store.create(record)
    if record.status == "building":
        enqueue(queue, BUILD_ASSET, tenant, asset_id, settings, description=f"build asset {asset_id} ({kind})")
    return record


@router.get("", response_model=AssetsPublic)
def list_assets(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    kind: AssetKind | None = None,
    status: AssetStatus | None = None,
) -> AssetsPublic:
    where = None
    if kind or status:
        def where(r: AssetRecord) -> bool:
            return (kind is None or r.kind == kind) and (status is None or r.status == status)
    records, count = store.list(AssetRecord, tenant, offset, min(limit, settings.page_size_max), where)
    return AssetsPublic(data=records, count=count)


@router.get("/{asset_id}", response_model=AssetPublic)
def get_asset(asset_id: str, tenant: TenantDep, store: StoreDep) -> AssetRecord:
    return store.get(AssetRecord, tenant, asset_id)


@router.delete("/{asset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_asset(asset_id: str, tenant: TenantDep, store: StoreDep) -> None:
    """Delete an asset and its files; refused while a queued or running job uses it."""
    record = store.get(AssetRecord, tenant, asset_id)
    if record.status == "building":
        raise Conflict(f"asset {asset_id} is being built; cancel its build or delete it when it is ready or failed")
    delete_unless_used(store, record, f"asset {asset_id} is", lambda job: asset_id in job.spec.scene.assets)


@router.post("/{asset_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=AssetPublic)
def cancel_asset_build(asset_id: str, tenant: TenantDep, store: StoreDep) -> AssetRecord:
    """Cancel an asset's build: one not started yet at once, a running one within seconds
    (whatever its stage); the asset then fails with the reason. An asset that is not being
    built is a conflict."""
    from service.events import cancel_key
    from service.queue import cancel_queued
    from service.asset_tasks import BUILD_CANCELLED

    record = store.get(AssetRecord, tenant, asset_id)
    if record.status != "building":
        raise Conflict(f"asset {asset_id} is {record.status}, not being built")
    store.redis.set(cancel_key(asset_id), "1", ex=7 * 24 * 3600)
    if cancel_queued(store.redis, asset_id):
        def cancelled(current: AssetRecord) -> None:
            if current.status == "building":
                current.status, current.error = "failed", BUILD_CANCELLED

        record = store.update(AssetRecord, tenant, asset_id, cancelled)
    return record
