"""Records (what is stored) and the API's schema families (what is sent and answered).

As in the FastAPI template: ``XBase`` holds the fields a client sets, ``XCreate`` what a create
request sends, ``XPublic`` what the API answers, ``XsPublic`` a page of them; ``XRecord`` is
the stored form (with the tenant and bookkeeping the API does not show).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.asset_fields import ObjectFieldOverrides, ObjectTrainerOverrides, SplatTrainerOverrides
from service.job_fields import drop_retired

AssetKind = Literal["nerfstudio", "posed-images", "mesh", "nerfsim", "splat"]
AssetStatus = Literal["building", "ready", "failed"]
TargetFormat = Literal["coco", "yolo"]
TargetRole = Literal["validation", "test", "both"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Record(BaseModel):
    """Fields every stored record has."""

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    revision: int = 0
    """Incremented on every save: the newer of a Redis and a file copy wins on reconcile."""


# --------------------------------------------------------------------------------------------
# assets


class AssetBuild(BaseModel):
    """How an upload becomes a nerfsim asset: a NeRF or a splat trained on a mesh's renders or a
    posed image set, a NeRF baked into a splat, a splat file put into the object frame."""

    model_config = ConfigDict(extra="forbid", strict=True)

    views: int = Field(100, ge=4, le=1000, description="Training views rendered from a mesh.")
    test_views: int = Field(10, ge=0, le=200, description="Held-out views rendered from a mesh.")
    view_size: int = Field(128, ge=16, le=1024, description="Side of the rendered views, pixels.")
    spp: int = Field(64, ge=1, le=1024, description="Samples per pixel of the mesh renders.")
    train_steps: int = Field(3000, ge=1, le=100_000, description="Object NeRF (or splat) training steps at most.")
    train_minutes: float = Field(15.0, gt=0, le=600, description="Object NeRF (or splat) training time budget.")
    model: ObjectFieldOverrides = Field(default_factory=ObjectFieldOverrides, description="ObjectFieldConfig overrides.")
    trainer: ObjectTrainerOverrides = Field(default_factory=ObjectTrainerOverrides,
                                            description="ObjectTrainerConfig overrides.")
    representation: Literal["nerf", "splat"] = Field(
        "nerf", description="What the asset becomes: an object NeRF, or a 3D Gaussian splat (trained on the mesh's "
                            "renders or the posed images; baked from a nerfsim or nerfstudio NeRF, rendered from "
                            "`views` cameras of `view_size` px). A `splat` upload is a splat whatever this says.")
    up_axis: Literal["y", "z"] | None = Field(
        None, description="Up axis of an uploaded mesh or splat file. Default: z for meshes (YCB scans); for "
                          "splats the file's 'Vertical Axis' comment (nerfstudio writes z), else y.")
    scale: float = Field(1.0, gt=0, le=1000, description="Metres per unit of an uploaded mesh or splat file.")
    splat: SplatTrainerOverrides = Field(default_factory=SplatTrainerOverrides,
                                         description="SplatTrainConfig overrides (splat training and baking).")


class AssetBase(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Class name of the object in the labels.")
    kind: AssetKind


class AssetPublic(AssetBase):
    id: str
    status: AssetStatus
    error: str | None = None
    build: AssetBuild
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime
    updated_at: dt.datetime


class AssetRecord(Record, AssetPublic):
    object_path: str | None = None
    """The object for scene.json, relative to the asset's folder (``object`` or a config.yml)."""

    @model_validator(mode="before")
    @classmethod
    def _retired_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "build" in data:
            data = {**data, "build": drop_retired(data["build"], AssetBuild)}
        return data


class AssetsPublic(BaseModel):
    data: list[AssetPublic]
    count: int


# --------------------------------------------------------------------------------------------
# targets


class TargetBase(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: TargetRole = "validation"


class TargetPublic(TargetBase):
    id: str
    format: TargetFormat
    num_images: int
    num_boxes: int
    class_names: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class TargetRecord(Record, TargetPublic):
    data_path: str
    """The COCO json or the YOLO folder, relative to the target's folder."""


class TargetsPublic(BaseModel):
    data: list[TargetPublic]
    count: int


# --------------------------------------------------------------------------------------------
# weights


class WeightsBase(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="A name for the weights.")


class WeightsPublic(WeightsBase):
    """An Ultralytics YOLO detection checkpoint a job's detector can start from."""

    id: str
    class_names: list[str] = Field(description="The checkpoint's classes, in class-id order.")
    parameters: int = Field(description="Number of parameters of the model.")
    scale: str | None = Field(None, description="Model scale of its yaml (n, s, m, l, x), when it names one.")
    yaml_file: str | None = Field(None, description="The model yaml it was built from, when recorded.")
    size_bytes: int
    created_at: dt.datetime
    updated_at: dt.datetime


class WeightsRecord(Record, WeightsPublic):
    """Stored as ``weights.pt`` in the record's folder."""


class WeightsListPublic(BaseModel):
    data: list[WeightsPublic]
    count: int


# --------------------------------------------------------------------------------------------
# backgrounds


class BackgroundsBase(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="A name for the photo set.")


class BackgroundsPublic(BackgroundsBase):
    """A set of background photographs a job's scenes are composed on."""

    id: str
    num_images: int = Field(description="Images in the set (each was decoded on upload).")
    image_sizes: dict[str, int] = Field(description="How many images have each size: 'WIDTHxHEIGHT' -> count.")
    ignored_files: int = Field(0, description="Files of the upload that are not images (by suffix), left out.")
    size_bytes: int = Field(description="Bytes of the stored images.")
    created_at: dt.datetime
    updated_at: dt.datetime


class BackgroundsRecord(Record, BackgroundsPublic):
    """Stored as a flat folder of images, ``images/`` in the record's folder."""


class BackgroundsListPublic(BaseModel):
    data: list[BackgroundsPublic]
    count: int


# --------------------------------------------------------------------------------------------
# presets

class PresetPublic(BaseModel):
    """A named method preset: what it does and the loop settings it sets."""

    name: str
    description: str
    settings: dict[str, Any]


class PresetsPublic(BaseModel):
    data: list[PresetPublic]
    count: int
    default: str
    """The preset a job runs unless it names another."""
    parts: list[str]
    """The parts of psi a job can name in ``psi.learnable``."""


class Message(BaseModel):
    message: str


class ErrorDetail(BaseModel):
    """An error answer: a message naming the problem, or FastAPI's list of request validation
    problems."""

    detail: str | list[dict[str, Any]]
