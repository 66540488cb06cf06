"""From a JobSpec to the loop's OptimizeConfig: the one conversion, used by the worker
(service.tasks), by ``nerfsim optimize`` (service.cli) and, with placeholder paths, by the API to
refuse at submission what only the loop's own checks find.

A spec names its assets, target sets, background sets and detector weights by reference;
:func:`resolve` finds them (record ids in a tenant's storage; with ``nerfsim optimize`` also
paths) and :func:`loop_config` puts the paths into the config, the scene inline in
``scene.spec`` (no scene.json is written).

A job keeps the config it was accepted with (:func:`accepted_settings`, recorded by the API in
``JobRecord.config``): the worker runs that, with the paths of today, so that a nerfsim release
that changes a default (the default preset) changes no job already accepted, nor the checkpoint
it resumes from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerfsim_client.spec import JobSpec

from optimizer.config import OptimizeConfig, merged, plain
from service.errors import Conflict, InvalidField, NotFound
from service.records import RECORD_TYPES
from service.schemas import AssetRecord, BackgroundsRecord, Record, TargetRecord, WeightsRecord
from service.storage import BACKGROUNDS_DIR, WEIGHTS_FILE, Storage

SCENE_SETTINGS = ("harvest_backgrounds", "resting_poses", "canonical_pose_share", "several_objects")
"""Fields of the spec's scene section that are fields of the loop's scene section as they are."""
RUN_TIME_SETTINGS = {"scene": ("spec",), "targets": ("val", "test"), "detector": ("weights",)}
"""The loop's settings that hold the paths of a job's references (the scene with its objects'
and backgrounds' paths): resolved whenever the job runs, never recorded."""


@dataclass
class Resolved:
    """Where a job's references are."""

    objects: list[tuple[str, str]]
    """(class name, object path: an asset folder or a nerfstudio config.yml), in class order."""
    target_val: str
    target_test: str | None = None
    backgrounds: list[str] = field(default_factory=list)
    """Folders of background photos."""
    weights: str | None = None
    """The detector checkpoint (.pt) to start from."""


def placeholders(spec: JobSpec) -> Resolved:
    """Stand-ins of the references: enough for the loop's checks of the settings."""
    return Resolved([(f"class{i}", "asset") for i in range(len(spec.scene.assets))], "validation",
                    "test" if spec.targets.test else None, ["backgrounds"] * len(spec.scene.backgrounds),
                    "weights.pt" if spec.detector.weights else None)


def loop_config(spec: JobSpec, resolved: Resolved, name: str = "job",
                accepted: dict[str, Any] | None = None) -> OptimizeConfig:
    """The loop's config of ``spec`` with its references at ``resolved``; ValueError naming a
    setting the loop does not take. With ``accepted`` (what :func:`accepted_settings` kept when
    the job was accepted) the job's settings are those, whatever today's defaults are."""
    scene = spec.scene
    scene_spec = {"name": name, "fov_deg": scene.fov_deg, "objects": [{"name": n, "path": p} for n, p in resolved.objects],
                  "backgrounds": resolved.backgrounds, "procedural_backgrounds": scene.procedural_backgrounds}
    scene_section = {"spec": scene_spec, **scene.model_dump(include=set(SCENE_SETTINGS))}
    if scene.photometric is not None:  # on: PhotometricConfig's defaults; off: plain renders
        scene_section["photometric"] = {} if scene.photometric else None
    nested = {
        **spec.model_dump(include={"preset", "seed", "device", "budget", "outer", "hypergradient", "psi", "final"}),
        "scene": scene_section,
        "targets": {"val": resolved.target_val, "test": resolved.target_test},
        "detector": {**spec.detector.model_dump(exclude={"weights"}), "weights": resolved.weights},
    }
    if accepted is None:
        return OptimizeConfig.from_dict(nested)
    paths = {section: {name: nested[section][name] for name in names} for section, names in RUN_TIME_SETTINGS.items()}
    return OptimizeConfig.from_saved(merged(accepted, paths))


def accepted_settings(config: OptimizeConfig) -> dict[str, Any]:
    """What a job record keeps of its loop config (``JobRecord.config``): every setting with
    the defaults of the nerfsim that accepted it (the preset's name and settings included), but
    not the paths (RUN_TIME_SETTINGS)."""
    settings = plain(config.to_dict())
    for section, names in RUN_TIME_SETTINGS.items():
        for name in names:
            del settings[section][name]
    return settings


def check_spec(spec: JobSpec, accepted: dict[str, Any] | None = None) -> dict[str, Any]:
    """InvalidField naming the first setting of ``spec`` (run with ``accepted``, a job's
    recorded settings, when given) that the loop refuses (its own checks: one copy of the
    rules), before the job is queued; else the settings to record (:func:`accepted_settings`)."""
    from optimizer.psi_config import PsiConfig

    try:
        # The initial psi's checks that need no scene: one class, and a background so that
        # plain_background false is judged by the spec (it knows the backgrounds).
        PsiConfig(**spec.psi.initial.model_dump(), num_backgrounds=1)
    except ValueError as error:
        raise InvalidField(f"psi.initial: {str(error).removeprefix('PsiConfig.')}") from error
    try:
        config = loop_config(spec, placeholders(spec), accepted=accepted)
        config.validate()
    except (TypeError, ValueError) as error:
        raise InvalidField(str(error).removeprefix("OptimizeConfig.")) from error
    return accepted_settings(config)


# --------------------------------------------------------------------------------------------
# references


@dataclass
class TenantRecords:
    """A tenant's records and their folders: the service's store, or the files of a storage."""

    storage: Storage
    tenant: str | None
    read: Callable[[type[Record], str | None, str], Record]
    """(record type, tenant, id) -> the record; NotFound when there is none."""

    def get(self, record_type: type[Record], record_id: str) -> Record:
        return self.read(record_type, self.tenant, record_id)

    def folder(self, record_type: type[Record], record_id: str) -> Path:
        return self.storage.record_dir(_kind(record_type), self.tenant, record_id)


def stored_records(storage: Storage, tenant: str | None) -> TenantRecords:
    """A tenant's records read from their ``record.json`` files (no Redis: ``nerfsim optimize``)."""

    def read(record_type: type[Record], tenant: str | None, record_id: str) -> Record:
        kind = _kind(record_type)
        if tenant is None:
            raise NotFound(f"{kind} {record_id}: no such file, and no tenant given to find a record id in {storage.root}")
        path = storage.record_file(kind, tenant, record_id)
        if "/" in record_id or not path.is_file():
            raise NotFound(f"{kind} {record_id}: no such file, nor a record of tenant {tenant} in {storage.root}")
        return record_type.model_validate_json(path.read_text())

    return TenantRecords(storage, tenant, read)


def resolve(spec: JobSpec, records: TenantRecords, base: Path | None = None) -> Resolved:
    """Where ``spec``'s references are: record ids in ``records``; with a ``base`` folder (the
    CLI's job file's) also paths, relative to it, used as they are when they exist."""

    def local(reference: str) -> Path | None:
        path = base / reference if base is not None else None
        return path if path is not None and path.exists() else None

    def stored(record_type: type[Record], reference: str, inside: Callable[[Record], str]) -> str:
        """The path ``reference`` names, or what ``inside`` names in the folder of its record."""
        path = local(reference)
        if path is not None:
            return str(path)
        record = records.get(record_type, reference)  # (NotFound: another tenant's id, or none)
        return str(records.folder(record_type, reference) / inside(record))

    objects = []
    for reference in spec.scene.assets:
        path = local(reference)
        if path is not None:
            objects.append((_asset_name(path), str(path)))
            continue
        asset = records.get(AssetRecord, reference)
        if asset.status != "ready" or asset.object_path is None:
            raise Conflict(f"scene.assets: asset {reference} is {asset.status}, not ready")
        objects.append((asset.name, str(records.folder(AssetRecord, reference) / asset.object_path)))

    def target(reference: str) -> str:
        return stored(TargetRecord, reference, lambda target: target.data_path)

    test, weights = spec.targets.test, spec.detector.weights
    return Resolved(objects, target(spec.targets.val), test and target(test),
                    [stored(BackgroundsRecord, b, lambda _: BACKGROUNDS_DIR) for b in spec.scene.backgrounds],
                    weights and stored(WeightsRecord, weights, lambda _: WEIGHTS_FILE))


def _asset_name(path: Path) -> str:
    """The class name of a local asset: its asset.json's name, else the folder's (or file's) name."""
    meta = path / "asset.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("name") or path.name)
    return path.stem if path.is_file() else path.name


def _kind(record_type: type[Record]) -> str:
    return next(kind for kind, known in RECORD_TYPES.items() if known is record_type)
