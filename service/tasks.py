"""What a worker runs: a closed-loop job, or an asset build. Both are idempotent: they read the
record, skip work already done, and publish results under their final names in one rename.

A closed-loop job runs ``optimizer.loop.run_optimization`` in the job's ``work/`` folder, where
the loop keeps its checkpoint: a retried job (its worker was killed, or it raised) resumes from
the last completed outer iteration. Progress goes to the job's Redis stream and record; the
job's ``should_stop`` reads the cancellation flag between the loop's steps, and
``service.interruption`` stops it within seconds inside a step. When it ends - done, cancelled or failed -
whatever it produced is published to ``artifacts/`` (a failed job keeps its partial artifacts).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job

from optimizer.config import OptimizeConfig
from service import metrics
from service.archives import zip_folder
from service.errors import ServiceError
from service import attempts
from service.events import cancel_key, publish
from service.interruption import JobCancelled, WorkerStopping, interruptible
from service.logs import job_context
from service.portable import copy_portable, server_prefixes
from service.records import RecordStore
from service.schemas import (
    TERMINAL_STATUSES,
    AssetRecord,
    BackgroundsRecord,
    JobRecord,
    TargetRecord,
    WeightsRecord,
    utcnow,
)
from service.settings import ServiceSettings, get_settings
from service.storage import BACKGROUNDS_DIR, WEIGHTS_FILE, Storage, publish_dir, remove_dir, staging_dir, write_json_atomic

log = logging.getLogger(__name__)

WORK_DIR = "work"
ARTIFACTS_DIR = "artifacts"
PRIVATE_FILES = {"checkpoint.pt"}
"""Files of the loop's folder that are its own state, not results."""
BUILD_CANCELLED = "the build was cancelled"
ZIPPED_FOLDERS = {"dataset": "dataset.zip", "samples": "samples.zip", "plots": "plots.zip"}


def _context(connection: redis.Redis | None = None) -> tuple[ServiceSettings, RecordStore, redis.Redis]:
    settings = get_settings()
    if connection is None:
        connection = get_current_job().connection
    return settings, RecordStore(connection, Storage(settings.storage_root, settings.artifact_mirror)), connection


# --------------------------------------------------------------------------------------------
# closed-loop jobs


def job_config(record: JobRecord, store: RecordStore, job_dir: Path) -> OptimizeConfig:
    """The loop's config for a job: its scene (``scene.json`` listing the tenant's assets and
    background photo sets), its target sets and its uploaded detector weights, at their paths in
    storage (the only way ``detector_weights`` and ``backgrounds`` get a path: a request names
    them by id)."""
    storage = store.storage
    objects = []
    for asset_id in record.assets:
        asset = store.get(AssetRecord, record.tenant, asset_id)
        if asset.status != "ready" or asset.object_path is None:
            raise ServiceError(f"asset {asset_id} is {asset.status}, not ready")
        path = storage.record_dir("asset", record.tenant, asset_id) / asset.object_path
        objects.append({"name": asset.name, "path": str(path)})
    backgrounds = [str(storage.record_dir("backgrounds", record.tenant, b.id) / BACKGROUNDS_DIR)
                   for b in (store.get(BackgroundsRecord, record.tenant, i) for i in record.backgrounds)]
    scene = {"name": record.id, "fov_deg": record.fov_deg, "objects": objects, "backgrounds": backgrounds,
             "procedural_backgrounds": record.procedural_backgrounds}
    write_json_atomic(job_dir / "scene.json", scene)

    def target_path(target_id: str | None) -> str | None:
        if target_id is None:
            return None
        target = store.get(TargetRecord, record.tenant, target_id)
        return str(storage.record_dir("target", record.tenant, target_id) / target.data_path)

    config = record.optimize_config(str(job_dir / "scene.json"), target_path(record.target_val),
                                    target_path(record.target_test))
    if record.detector_weights is not None:
        weights = store.get(WeightsRecord, record.tenant, record.detector_weights)
        config.detector.weights = str(storage.record_dir("weights", record.tenant, weights.id) / WEIGHTS_FILE)
    return config


class _Reporter:
    """The loop's ``on_progress``: the job's stream and record (latest report, metric history)."""

    def __init__(self, store: RecordStore, record: JobRecord, settings: ServiceSettings, job_dir: Path) -> None:
        self.store, self.record, self.settings, self.job_dir = store, record, settings, job_dir

    def __call__(self, progress) -> None:
        report = progress.to_dict()
        report["samples"] = [self._sample_url(Path(p)) for p in progress.samples]
        publish(self.store.redis, self.record.id, "progress", report, self.settings.progress_stream_length)

        def change(record: JobRecord) -> None:
            record.progress = report
            if progress.stage == "outer" and progress.metrics:  # (not the "cancelled" report)
                # The loop's metrics are floats; the iteration is a count.
                entry = {**progress.metrics, "iteration": int(progress.iteration)}
                record.history = [h for h in record.history if h.get("iteration") != progress.iteration] + [entry]

        try:
            self.store.update(JobRecord, self.record.tenant, self.record.id, change)
        except redis.RedisError as error:
            log.warning("progress not recorded (Redis unreachable)", extra={"error": str(error)})

    def _sample_url(self, path: Path) -> str:
        try:
            relative = path.resolve().relative_to((self.job_dir / WORK_DIR).resolve())
        except ValueError:
            return path.name
        return f"/v1/jobs/{self.record.id}/files/{relative.as_posix()}"


class _CancelFlag:
    """A job's (or an asset build's) cancellation flag, read at most once a second: the loop's
    ``should_stop``, and what the interruption watcher polls."""

    def __init__(self, connection: redis.Redis, job_id: str) -> None:
        self.connection, self.key = connection, cancel_key(job_id)
        self.checked_at, self.cancelled = 0.0, False

    def __call__(self) -> bool:
        if not self.cancelled and time.monotonic() - self.checked_at > 1.0:
            self.checked_at = time.monotonic()
            try:
                self.cancelled = bool(self.connection.exists(self.key))
            except redis.RedisError:
                pass
        return self.cancelled


def publish_artifacts(job_dir: Path, storage: Storage) -> dict[str, str]:
    """Copy the loop's results (not its checkpoint) from ``work/`` to ``artifacts/`` in one
    rename: folders become zips (the dataset holds COCO and YOLO labels side by side), JSON files
    lose the server's paths (service.portable); returns name -> file name."""
    work = job_dir / WORK_DIR
    final = job_dir / ARTIFACTS_DIR
    staging = staging_dir(final)
    prefixes = server_prefixes(job_dir, storage.root)
    try:
        if work.is_dir():
            for item in sorted(work.iterdir()):
                if item.name.startswith(".") or item.name in PRIVATE_FILES or item.suffix in {".tmp", ".partial"}:
                    continue
                if item.is_file():
                    copy_portable(item, staging / item.name, prefixes)  # JSON without the server's paths
                elif item.name in ZIPPED_FOLDERS:
                    zip_folder(item, staging / ZIPPED_FOLDERS[item.name])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # (a full disk): the previous artifacts stay as they were
        raise
    publish_dir(staging, final)
    storage.mirror_dir(final)
    return {p.name: p.name for p in sorted(final.iterdir())}


def _finish(store: RecordStore, record: JobRecord, status: str, error: str | None, job_dir: Path) -> None:
    if error is not None:
        error = store.storage.without_root(error)
    try:
        artifacts = publish_artifacts(job_dir, store.storage)
    except OSError as publish_error:
        log.exception("could not publish artifacts")
        artifacts, error = {}, error or f"could not publish artifacts: {publish_error}"

    def change(current: JobRecord) -> None:
        current.status = status
        current.error = error
        attempts.end_attempt(current, status, error, counted=status == "failed")
        current.finished_at = utcnow()
        current.artifacts = {name: f"/v1/jobs/{current.id}/artifacts/{name}" for name in artifacts}

    try:
        final = store.update(JobRecord, record.tenant, record.id, change)
    except OSError as write_error:
        if write_error.errno != errno.ENOSPC:
            raise
        # The disk is full: the job's record file would keep saying "running" (and a recovery
        # from it would queue the job again). The job is over, so its working files (the
        # loop's checkpoint and scratch images, never published) make room for its record.
        log.warning("disk full: removing the job's working files to store its final record")
        remove_dir(job_dir / WORK_DIR)
        final = store.update(JobRecord, record.tenant, record.id, change)
    duration = (final.finished_at - (final.started_at or final.created_at)).total_seconds()
    metrics.count_finished_job(store.redis, status, duration)
    publish(store.redis, record.id, "status", {"status": status, "error": error, "artifacts": final.artifacts})
    log.info("job finished", extra={"status": status, "error": error, "seconds": round(duration, 1)})


def run_job(tenant: str, job_id: str) -> str:
    """Run (or resume) the closed-loop job ``job_id``; returns its final status."""
    settings, store, connection = _context()
    with job_context(job_id):
        record = store.get(JobRecord, tenant, job_id)
        if record.status in TERMINAL_STATUSES:
            return record.status
        job_dir = store.storage.record_dir("job", tenant, job_id)
        if record.cancel_requested or connection.exists(cancel_key(job_id)):
            _finish(store, record, "cancelled", None, job_dir)
            return "cancelled"

        def start(current: JobRecord) -> None:
            current.status = "running"
            current.error = None
            attempts.start_attempt(current)

        record = store.update(JobRecord, tenant, job_id, start)
        publish(connection, job_id, "status", {"status": "running", "attempt": record.attempts})
        log.info("job started", extra={"attempt": record.attempts})
        from optimizer.loop import TrainingDivergedError, run_optimization

        try:
            config = job_config(record, store, job_dir)
            write_json_atomic(job_dir / "config.json", config.to_dict())
            cancelled = _CancelFlag(connection, job_id)
            with interruptible(cancelled):
                result = run_optimization(config, job_dir / WORK_DIR, on_progress=_Reporter(store, record, settings, job_dir),
                                          should_stop=cancelled, progress_bar=False)
        except JobCancelled:
            # Stopped inside a step: whatever the finished steps produced is published.
            _finish(store, record, "cancelled", None, job_dir)
            return "cancelled"
        except ValueError as error:
            # Bad input (a scene, a target, a setting): retrying cannot help.
            _finish(store, record, "failed", str(error), job_dir)
            return "failed"
        except TrainingDivergedError as error:
            # A seeded retry resumes from the same checkpoint and diverges at the same step.
            _finish(store, record, "failed", f"training diverged: {error}", job_dir)
            return "failed"
        metrics.count_rendered_images(connection, result.images_rendered)
        status = "cancelled" if result.status == "cancelled" else "succeeded"
        _finish(store, record, status, None, job_dir)
        return status


def on_failure(job, connection: redis.Redis, exc_type, exc_value, traceback) -> None:
    """RQ's failure callback (the job raised, timed out, its worker died or was shut down): the
    record goes back to 'queued' when RQ will retry it, else to 'failed' with the reason and
    whatever the job produced so far. An attempt that made progress, or that a worker shutdown
    stopped, gives its retry back (service.attempts)."""
    tenant, record_id = job.args
    settings, store, _ = _context(connection)
    if not record_id.startswith("job-"):
        _asset_failed(job, store, tenant, record_id,
                      store.storage.without_root(attempts.cause(exc_type, exc_value, settings.job_timeout_s)),
                      exc_type is not None and issubclass(exc_type, WorkerStopping))
        return
    record = store.get(JobRecord, tenant, record_id)
    if record.status in TERMINAL_STATUSES:
        return
    counted = attempts.counts_as_failure(record, exc_type)
    if not counted:
        _give_back_retry(job)
    reason = store.storage.without_root(attempts.describe(record, attempts.cause(exc_type, exc_value,
                                                                             settings.job_timeout_s)))
    with job_context(record_id):
        if job.retries_left:
            log.warning("job will be retried", extra={"reason": reason, "counted": counted,
                                                      "retries_left": job.retries_left - 1})

            def requeue(current: JobRecord) -> None:
                current.status, current.error = "queued", None
                attempts.end_attempt(current, "interrupted", reason, counted)

            store.update(JobRecord, tenant, record_id, requeue)
            publish(connection, record_id, "status", {"status": "queued", "retry": True, "reason": reason,
                                                      "counted": counted})
        else:
            retries = settings.job_retries
            _finish(store, record, "failed", f"{reason}; no retries left (job_retries={retries})",
                    store.storage.record_dir("job", tenant, record_id))


def _give_back_retry(job) -> None:
    """The attempt that just ended uses no retry: RQ takes one off as it re-queues the job (its
    failure callback runs before it decides), so one is added here."""
    job.retries_left = (job.retries_left or 0) + 1


def _asset_failed(job, store: RecordStore, tenant: str, asset_id: str, reason: str, shutdown: bool) -> None:
    record = store.get(AssetRecord, tenant, asset_id)
    if record.status != "building":
        return
    if shutdown:
        _give_back_retry(job)  # a shutdown is not a failure of the build
    with job_context(asset_id):
        if job.retries_left:
            log.warning("asset build will be retried", extra={"reason": reason, "retries_left": job.retries_left - 1})
        else:
            _fail_asset(store, record, reason)


# --------------------------------------------------------------------------------------------
# asset builds


def _fail_asset(store: RecordStore, record: AssetRecord, reason: str) -> None:
    def change(current: AssetRecord) -> None:
        current.status, current.error = "failed", reason

    store.update(AssetRecord, record.tenant, record.id, change)
    log.info("asset build failed", extra={"asset": record.id, "reason": reason})


def build_asset(tenant: str, asset_id: str) -> str:
    """Make asset ``asset_id`` loadable: check a nerfstudio checkpoint by loading it; train a
    nerfsim asset (NeRF or splat) from a posed image set, or from a mesh rendered into one first;
    bake a NeRF into a splat; put an uploaded splat into the object frame."""
    settings, store, connection = _context()
    with job_context(asset_id):
        record = store.get(AssetRecord, tenant, asset_id)
        if record.status != "building":
            return record.status
        cancelled = _CancelFlag(connection, asset_id)
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
