"""What a worker runs for an asset build (RQ's ``service.asset_tasks.build_asset``): check,
train, bake or import the uploaded object. Idempotent: a build that is no longer ``building``
is not run again; the result is published under its final name in one rename."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from service.interruption import JobCancelled, interruptible
from service.logs import job_context
from service.records import RecordStore
from service.schemas import AssetRecord
from service.settings import ServiceSettings
from service.storage import publish_dir, staging_dir
from service.task_common import CancelFlag, give_back_retry, task_context

log = logging.getLogger(__name__)

BUILD_CANCELLED = "the build was cancelled"


def asset_failed(job, store: RecordStore, tenant: str, asset_id: str, reason: str, shutdown: bool) -> None:
    """RQ's failure callback for an asset build (service.tasks.on_failure): the build fails
    with ``reason`` unless RQ retries it; a worker shutdown uses no retry."""
    record = store.get(AssetRecord, tenant, asset_id)
    if record.status != "building":
        return
    if shutdown:
        give_back_retry(job)  # a shutdown is not a failure of the build
    with job_context(asset_id):
        if job.retries_left:
            log.warning("asset build will be retried", extra={"reason": reason, "retries_left": job.retries_left - 1})
        else:
            _fail_asset(store, record, reason)


def _fail_asset(store: RecordStore, record: AssetRecord, reason: str) -> None:
    def change(current: AssetRecord) -> None:
        current.status, current.error = "failed", reason

    store.update(AssetRecord, record.tenant, record.id, change)
    log.info("asset build failed", extra={"asset": record.id, "reason": reason})


def build_asset(tenant: str, asset_id: str) -> str:
    """Make asset ``asset_id`` loadable: check a nerfstudio checkpoint by loading it; train a
    nerfsim asset (NeRF or splat) from a posed image set, or from a mesh rendered into one first;
    bake a NeRF into a splat; put an uploaded splat into the object frame."""
    settings, store, connection = task_context()
    with job_context(asset_id):
        record = store.get(AssetRecord, tenant, asset_id)
        if record.status != "building":
            return record.status
        cancelled = CancelFlag(connection, asset_id)
        asset_dir = store.storage.record_dir("asset", tenant, asset_id)
        source = asset_dir / record.details["source"]
        build = record.build
        try:
            if cancelled():
                raise JobCancelled
            # Cancelling stops the build within seconds; a worker shutdown too (it is re-queued).
            with interruptible(cancelled):
                details = _build(record, asset_dir, source, settings)
        except JobCancelled:
            _fail_asset(store, record, BUILD_CANCELLED)
            return "failed"
        except ValueError as error:
            _fail_asset(store, record, str(error).replace(str(asset_dir) + "/", ""))
            return "failed"

        def ready(current: AssetRecord) -> None:
            current.status, current.error = "ready", None
            current.object_path = details.pop("object_path")
            current.details = {**current.details, **details}

        store.update(AssetRecord, tenant, asset_id, ready)
        log.info("asset ready", extra={"asset": asset_id, "kind": record.kind, "build": build.model_dump()})
        return "ready"


def _build(record: AssetRecord, asset_dir: Path, source: Path, settings: ServiceSettings) -> dict[str, Any]:
    import torch

    torch.set_num_threads(settings.threads)
    build = record.build
    if record.kind == "splat" or (build.representation == "splat" and record.kind in ("nerfsim", "nerfstudio")):
        return _build_splat(record, asset_dir, source)
    if record.kind == "nerfstudio":
        from renderer.nerfstudio_asset import load_nerfstudio_field

        field = load_nerfstudio_field(source)
        return {"object_path": source.relative_to(asset_dir).as_posix(), "aabb": field.aabb.tolist()}
    from service.assets import train_asset, train_splat_asset

    posed_dir, mesh = source.parent, None
    if record.kind == "mesh":
        from renderer.mesh import build_posed_image_set, load_textured_mesh

        up_axis = build.up_axis or "z"
        views = staging_dir(asset_dir / "views")
        build_posed_image_set(source, views, num_views=build.views, num_test_views=build.test_views,
                              size=build.view_size, spp=build.spp, progress=False, up_axis=up_axis, scale=build.scale)
        posed_dir = publish_dir(views, asset_dir / "views")
        if build.representation == "splat":  # the splat starts on the mesh's surface
            mesh = load_textured_mesh(source, up_axis=up_axis, scale=build.scale)
    if build.representation == "splat":
        stats = train_splat_asset(posed_dir, asset_dir / "object", record.name, steps=build.train_steps,
                                  minutes=build.train_minutes, splat=build.splat.model_dump(), mesh=mesh,
                                  progress=False)
    else:
        stats = train_asset(posed_dir, asset_dir / "object", record.name, steps=build.train_steps,
                            minutes=build.train_minutes, model=build.model.model_dump(),
                            trainer=build.trainer.model_dump(), progress=False)
    return {"object_path": "object", "training": json.loads(json.dumps(stats, default=float))}


def _build_splat(record: AssetRecord, asset_dir: Path, source: Path) -> dict[str, Any]:
    """A splat upload put into the object frame, or a NeRF upload baked into a splat (a bad
    splat raises renderer.splat.SplatError, a ValueError: the build fails with its reason)."""
    from renderer.splat_asset import import_splat
    from service.assets import bake_splat_asset

    build = record.build
    if record.kind == "splat":
        meta = import_splat(source, record.name, asset_dir / "object", up_axis=build.up_axis, scale=build.scale)
        return {"object_path": "object", "aabb": meta.aabb, "num_gaussians": meta.num_gaussians, "frame": meta.source}
    stats = bake_splat_asset(source, asset_dir / "object", record.name, views=build.views, view_size=build.view_size,
                             steps=build.train_steps, minutes=build.train_minutes, splat=build.splat.model_dump(),
                             progress=False)
    return {"object_path": "object", "training": json.loads(json.dumps(stats, default=float))}
