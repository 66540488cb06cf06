"""Where records and artifacts live: a local directory tree, written atomically.

Layout under the storage root::

    keys/<key id>.json                              hashed API keys
    tenants/<tenant>/<kind>s/<id>/record.json       asset, target and job records
    tenants/<tenant>/assets/<id>/object/            a ready asset (nerfsim asset or nerfstudio run)
    tenants/<tenant>/targets/<id>/data/             a validated labelled set
    tenants/<tenant>/weights/<id>/weights.pt        an uploaded detector checkpoint
    tenants/<tenant>/backgrounds/<id>/images/       an uploaded background photo set (validated)
    tenants/<tenant>/jobs/<id>/work/                the loop's folder (checkpoints, dataset, ...)
    tenants/<tenant>/jobs/<id>/artifacts/           the job's downloads, published in one rename

Nothing half-written is ever visible under its final name: files are written beside their
target and renamed over it; folders are filled under a ``.partial`` name and renamed.
Finished artifacts can also be copied to S3-compatible storage through fsspec
(``NERFSIM_ARTIFACT_MIRROR``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RECORD_FILE = "record.json"
WEIGHTS_FILE = "weights.pt"
"""The checkpoint in a weights record's folder."""
BACKGROUNDS_DIR = "images"
"""The flat folder of photos in a backgrounds record's folder."""


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, default=str).encode())


def staging_dir(final: Path) -> Path:
    """An empty folder beside ``final`` to fill before :func:`publish_dir` (stale leftovers of
    an interrupted attempt are cleared first)."""
    staging = final.with_name(final.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: Path, final: Path) -> Path:
    """Rename the filled ``staging`` folder to ``final``, replacing a previous version (a
    retried job publishes again; readers see the old or the new folder, never a mix)."""
    if final.exists():
        retired = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(final)
    return final


def remove_dir(path: Path) -> None:
    """Remove a record's folder: renamed away first, so it disappears at once."""
    if not path.exists():
        return
    retired = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.deleted")
    path.rename(retired)
    shutil.rmtree(retired, ignore_errors=True)


def kind_folder(kind: str) -> str:
    """The folder of a tenant's records of ``kind`` (``assets``, ``jobs``; ``weights`` and ``backgrounds`` stay)."""
    return kind if kind.endswith("s") else f"{kind}s"


class Storage:
    """The storage root and the paths of records and artifacts in it."""

    def __init__(self, root: Path, mirror: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.mirror = mirror

    def keys_dir(self) -> Path:
        return self.root / "keys"

    def tenants_dir(self) -> Path:
        return self.root / "tenants"

    def record_dir(self, kind: str, tenant: str, record_id: str) -> Path:
        return self.tenants_dir() / tenant / kind_folder(kind) / record_id

    def without_root(self, text: str) -> str:
        """``text`` (an error) with the server's storage path taken out: tenants see their files
        by their place in the storage, not by the server's paths."""
        return text.replace(str(self.root) + "/", "")

    def record_file(self, kind: str, tenant: str, record_id: str) -> Path:
        return self.record_dir(kind, tenant, record_id) / RECORD_FILE

    def scratch_dir(self) -> Path:
        """Uploads in progress (removed when handled)."""
        path = self.root / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def upload_scratch(self) -> Iterator[Path]:
        """A fresh folder (not yet created) for one upload in progress, removed when the upload
        is handled: a refused upload leaves nothing behind, a stored one was moved out of it."""
        scratch = self.scratch_dir() / uuid.uuid4().hex
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def mirror_dir(self, local: Path) -> str | None:
        """Copy a published folder to the artifact mirror (same path below the mirror URL)."""
        if not self.mirror:
            return None
        import fsspec

        target = self.mirror.rstrip("/") + "/" + local.resolve().relative_to(self.root).as_posix()
        filesystem, path = fsspec.core.url_to_fs(target)
        if filesystem.exists(path):
            filesystem.rm(path, recursive=True)  # a republished folder replaces the old copy whole
        filesystem.put(str(local), path, recursive=True)
        return target
