"""Records (what is stored) and the API's schema families (what is sent and answered).

As in the FastAPI template: ``XBase`` holds the fields a client sets, ``XCreate`` what a create
request sends, ``XPublic`` what the API answers, ``XsPublic`` a page of them; ``XRecord`` is
the stored form (with the tenant and bookkeeping the API does not show).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from optimizer.config import InverseHessian, Method, OptimizeConfig
from optimizer.presets import DEFAULT_PRESET, PRESETS
from optimizer.part_names import PARTS
from service.asset_fields import ObjectFieldOverrides, ObjectTrainerOverrides, SplatTrainerOverrides
from service.job_fields import (
    MAX_BACKGROUND_SETS,
    MAX_BACKGROUNDS,
    MAX_CLASSES,
    Architecture,
    Device,
    JobEstimator,
    JobOptions,
    PsiOverrides,
    drop_retired,
    sectioned,
)

AssetKind = Literal["nerfstudio", "posed-images", "mesh", "nerfsim", "splat"]
AssetStatus = Literal["building", "ready", "failed"]
TargetFormat = Literal["coco", "yolo"]
TargetRole = Literal["validation", "test", "both"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

RecordId = Annotated[str, Field(min_length=1, max_length=64)]
"""A record id as a request names it (ids are ``<kind>-<16 hex digits>``)."""


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


BackgroundsId = Annotated[str, Field(pattern=r"^backgrounds-[0-9a-f]{16}$")]


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

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
"""A preset's name (optimizer.presets.PRESETS): an unknown one is a 422 naming ``preset``."""


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


# --------------------------------------------------------------------------------------------
# jobs


class JobBudget(BaseModel):
    """How much work the job may do."""

    model_config = ConfigDict(extra="forbid", strict=True)

    outer_iterations: int = Field(20, ge=1, le=10_000)
    images_per_iteration: int = Field(32, ge=1, le=4096)
    inner_steps: int = Field(20, ge=1, le=10_000)
    final_images: int = Field(200, ge=1, le=1_000_000)
    final_epochs: int = Field(10, ge=1, le=1000)


class JobBase(BaseModel):
    assets: list[RecordId] = Field(min_length=1, max_length=MAX_CLASSES,
                                   description="Asset ids: the object classes, in order.")
    target_val: RecordId = Field(description="Target id of the labelled validation set that drives the loop.")
    target_test: RecordId | None = Field(None, description="Target id of the labelled test set (final metrics).")
    budget: JobBudget = Field(default_factory=JobBudget)
    learnable: list[str] = Field(default_factory=lambda: ["azimuth", "elevation", "distance", "exposure"],
                                 max_length=len(PARTS))
    preset: PresetName = Field(DEFAULT_PRESET, description="The method preset (GET /v1/presets); `method`, "
                                                           "`estimator` and options given explicitly win over it.")
    method: Method | None = Field(None, description="Overrides the preset's method.")
    estimator: JobEstimator | None = Field(None, description="Overrides the preset's estimator (neural-sim).")
    inverse_hessian: InverseHessian = "cg"
    detector: Architecture = "yolov8n-cpu"
    image_size: int = Field(64, ge=32, le=1280)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    backgrounds: list[BackgroundsId] = Field(
        default_factory=list, max_length=MAX_BACKGROUND_SETS,
        description="Ids of uploaded background photo sets (POST /v1/backgrounds) the scenes are composed on.")
    procedural_backgrounds: int | None = Field(
        None, ge=0, le=MAX_BACKGROUNDS,
        description="Generated textures added to the backgrounds. Default: 4 when the job has no photo "
                    "backgrounds (uploaded `backgrounds`, or harvested from its labelled photos), none when "
                    "it has.")
    fov_deg: float = Field(40.0, gt=1, lt=170, allow_inf_nan=False)
    psi: PsiOverrides = Field(default_factory=PsiOverrides, description="Initial values and shape of psi.")
    device: Device = "auto"
    detector_weights: str | None = Field(
        None, pattern=r"^weights-[0-9a-f]{16}$",
        description="Id of uploaded weights (POST /v1/weights) the detector starts from; they must share a "
                    "class name with the assets. Default: a random initialisation of `detector`.")
    options: JobOptions = Field(default_factory=JobOptions, description="Further loop settings (advanced).")

    def optimize_config(self, scene: str, target_val: str | None, target_test: str | None) -> OptimizeConfig:
        """The loop's config for this job, given where its scene and target sets are."""
        return OptimizeConfig.from_dict(sectioned({
            **self.options.loop_settings(),
            "scene": scene,
            "target_val": target_val,
            "target_test": target_test,
            "preset": self.preset,
            "method": self.method,
            "estimator": self.estimator,
            "inverse_hessian": self.inverse_hessian,
            "learnable": self.learnable,
            "psi": self.psi.model_dump(),
            **self.budget.model_dump(),
            "detector": self.detector,
            "image_size": self.image_size,
            "seed": self.seed,
            "device": self.device,
        }))

    @field_validator("learnable")
    @classmethod
    def _known_parts(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown parts of psi {unknown}; known: {list(PARTS)}")
        return value

    @field_validator("backgrounds")
    @classmethod
    def _distinct_sets(cls, value: list[str]) -> list[str]:
        repeated = sorted({b for b in value if value.count(b) > 1})
        if repeated:
            raise ValueError(f"background sets listed more than once: {repeated}")
        return value

    @field_validator("image_size")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError("image_size must be a multiple of 32 (the detector's stride)")
        return value


class JobCreate(JobBase):
    # Strict on requests only: stored records keep Record's tolerance of retired fields.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _something_to_draw(self) -> "JobCreate":
        if self.psi.plain_background is False and self.procedural_backgrounds == 0 and not self.backgrounds:
            raise ValueError("psi.plain_background false needs backgrounds or procedural_backgrounds >= 1: "
                             "nothing to draw")
        return self


class JobAttempt(BaseModel):
    """One run of a job on a worker."""

    number: int
    """1 for the first run; a retry or a resumption after an interruption adds one."""
    started_at: dt.datetime
    resumed_from: int = 0
    """Outer iterations already done (checkpointed) when it started."""
    ended_at: dt.datetime | None = None
    reached: int | None = None
    """Outer iterations done when it ended."""
    stage: str | None = None
    """The loop's stage when it ended (optimizer.config.Stage)."""
    outcome: Literal["running", "interrupted", "failed", "succeeded", "cancelled"] = "running"
    reason: str | None = None
    """Why it ended early (an interruption or a failure)."""
    counted: bool = False
    """Whether it used up one of the service's retries: an attempt that ended without any
    progress did; one that checkpointed progress, or was stopped by a worker shutdown, did not."""


class JobPublic(JobBase):
    id: str
    status: JobStatus
    attempts: int = 0
    """Runs started (interrupted ones included; see attempt_history)."""
    error: str | None = None
    """Why the job failed (None while it is queued or runs again after an interruption)."""
    attempt_history: list[JobAttempt] = Field(default_factory=list)
    """Every run of the job, in order."""
    progress: dict[str, Any] | None = None
    """The latest progress report (optimizer.config.Progress as a dict)."""
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Metrics of each outer iteration, in order."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Downloadable artifacts: name -> URL path."""
    cancel_requested: bool = False
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class JobRecord(Record, JobPublic):
    idempotency_key: str | None = None
    request_hash: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _retired_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "preset" not in data:  # stored before presets: the paper's method and no baseline, as then
                data = {**data, "preset": "neural-sim",
                        "options": {"uniform_baseline": False, **(data.get("options") or {})}}
            data = {**data, **{name: drop_retired(data[name], model)
                               for name, model in (("options", JobOptions), ("psi", PsiOverrides)) if name in data}}
        return data


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class Message(BaseModel):
    message: str


class ErrorDetail(BaseModel):
    """An error answer: a message naming the problem, or FastAPI's list of request validation
    problems."""

    detail: str | list[dict[str, Any]]
