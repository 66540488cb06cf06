"""What a worker runs for a closed-loop job (asset builds: service.asset_tasks). Idempotent: it
reads the record, skips work already done, and publishes results under their final names in one
rename.

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
from pathlib import Path

import redis

from optimizer.config import OptimizeConfig
from service import attempts, metrics
from service.archives import zip_folder
from service.asset_tasks import asset_failed, build_asset  # noqa: F401  (build_asset: builds queued by its old name)
from service.events import cancel_key, publish
from service.interruption import JobCancelled, WorkerStopping, interruptible
from service.job_config import TenantRecords, accepted_settings, loop_config, resolve
from service.job_schemas import JobRecord
from service.logs import job_context
from service.portable import copy_portable, server_prefixes
from service.records import RecordStore
from service.schemas import TERMINAL_STATUSES, utcnow
from service.settings import ServiceSettings
from service.storage import Storage, publish_dir, remove_dir, staging_dir, write_json_atomic
from service.task_common import CancelFlag, give_back_retry, task_context

log = logging.getLogger(__name__)

WORK_DIR = "work"
ARTIFACTS_DIR = "artifacts"
PRIVATE_FILES = {"checkpoint.pt"}
"""Files of the loop's folder that are its own state, not results."""
ZIPPED_FOLDERS = {"dataset": "dataset.zip", "samples": "samples.zip", "plots": "plots.zip"}


def job_config(record: JobRecord, store: RecordStore) -> OptimizeConfig:
    """The loop's config for a job: the settings it was accepted with (its spec's, for a record
    stored before they were recorded) with its records' paths in the tenant's storage (the only
    way a job's assets, targets, background sets and weights get a path: a request names them by id)."""
    records = TenantRecords(store.storage, record.tenant, store.get)
    return loop_config(record.spec, resolve(record.spec, records), name=record.id, accepted=record.config)


def _with_settings(record: JobRecord, store: RecordStore, work: Path) -> JobRecord:
    """``record`` with the settings it runs recorded. A record stored before they were gets those
    of the run in its loop folder ``work`` (the loop's config.json beside the checkpoint it
    resumes), else those its spec has today."""
    if record.config is not None:
        return record
    try:
        started = OptimizeConfig.from_saved(json.loads((work / "config.json").read_text()))
    except (OSError, ValueError, TypeError, AttributeError):  # no run yet (or not the loop's file)
        started = None
    resumed = started is not None and (work / "checkpoint.pt").is_file()
    accepted = accepted_settings(started if resumed else job_config(record, store))

    def record_settings(current: JobRecord) -> None:
        if current.config is None:
            current.config, current.preset = accepted, accepted["preset"]

    return store.update(JobRecord, record.tenant, record.id, record_settings)


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
    settings, store, connection = task_context()
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
        from optimizer.checkpoint import set_aside_other_run  # torch: the API imports this module
        from optimizer.divergence import TrainingDivergedError
        from optimizer.loop import run_optimization

        try:
            record = _with_settings(record, store, job_dir / WORK_DIR)
            config = job_config(record, store)
            write_json_atomic(job_dir / "config.json", config.to_dict())
            # A checkpoint this job left under an older nerfsim (other config fields or defaults)
            # would fail the run: it starts over instead, and the job is kept.
            stale = set_aside_other_run(job_dir / WORK_DIR, config)
            if stale:
                log.warning("checkpoint of another config set aside; the run starts over", extra={"settings": stale})
            cancelled = CancelFlag(connection, job_id)
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
    settings, store, _ = task_context(connection)
    if not record_id.startswith("job-"):
        asset_failed(job, store, tenant, record_id,
                      store.storage.without_root(attempts.cause(exc_type, exc_value, settings.job_timeout_s)),
                      exc_type is not None and issubclass(exc_type, WorkerStopping))
        return
    record = store.get(JobRecord, tenant, record_id)
    if record.status in TERMINAL_STATUSES:
        return
    counted = attempts.counts_as_failure(record, exc_type)
    if not counted:
        give_back_retry(job)
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
