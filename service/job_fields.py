"""The typed, bounded parts of a job request: psi overrides, advanced loop settings and the final
detector's trainer arguments.

Each is an allowlist: an unknown field is refused (422 naming it), no value is coerced (``"3"``
and ``true`` are not numbers), every number has bounds and floats are finite. None of them can
name a server path or pass an arbitrary argument to Ultralytics: the scene, the target sets and
the detector's weights are set by the service, never by these fields. A field left out (or
null) keeps the loop's own default, so the stored and answered forms hold only what was sent.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from optimizer.config import AlignmentNormalisation, FinalInit, HessianLayers, HessianProduct, InnerOptimizer, SearchMetric
from optimizer.errors import OptimizerError
from optimizer.psi_config import PsiConfig

Architecture = Literal["yolov8n", "yolo11n", "yolov8n-cpu"]
"""The detector architectures a job can start from (detector.model.Architecture)."""
Device = Literal["auto", "cpu", "cuda"]
JobEstimator = Literal["pathwise", "score", "both"]
"""The estimators a job can name (optimizer.config.Estimator without the benchmark-only one)."""
JobAlignmentObjective = Literal["mean", "appearance"]
"""optimizer.config.AlignmentObjective without the benchmark-only one."""

MAX_CLASSES = 64
"""Most objects (assets) in a job, as JobBase.assets allows."""
MAX_AZIMUTH_BINS = 72
"""Most azimuth bins (5 degrees each): every scene is rendered at each bin by some estimators."""
MAX_BACKGROUNDS = 256
"""Most procedural backgrounds, as JobBase.procedural_backgrounds allows."""
MAX_BACKGROUND_SETS = 32
"""Most uploaded background photo sets in a job, as JobBase.backgrounds allows."""
MAX_APPEARANCES = 10_000
"""Most appearance embeddings of an object (one per training image of a nerfstudio model)."""

Probability = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0, le=1000)]
Elevation = Annotated[float, Field(ge=-90, le=90)]
Stops = Annotated[float, Field(ge=-20, le=20)]
T = TypeVar("T")
PerClass = Annotated[list[T], Field(min_length=1, max_length=MAX_CLASSES)]
"""A list of one value per class (generic alias: ``PerClass[float]``)."""
Pair = Annotated[list[T], Field(min_length=2, max_length=2)]
"""(lo, hi) or (x, y): a JSON array of two (a strict tuple would refuse JSON's lists)."""
BinRow = Annotated[list[Probability], Field(min_length=1, max_length=MAX_AZIMUTH_BINS)]
Channels = Annotated[list[Positive], Field(min_length=3, max_length=3)]
AppearanceRow = Annotated[list[Probability], Field(min_length=1, max_length=MAX_APPEARANCES + 1)]


class Strict(BaseModel):
    """Forbids unknown fields and coercion; leaves unset (None) fields out of its dumps."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # No return annotation: it would replace the fields in the answers' OpenAPI schema.
    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        return {name: value for name, value in handler(self).items() if value is not None}


def _ordered(model: BaseModel, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(model, name)
        if value is not None and value[0] > value[1]:
            raise ValueError(f"{name}: need lo <= hi, got {list(value)}")


# --------------------------------------------------------------------------------------------
# psi


class PsiOverrides(Strict):
    """Initial values and shape of psi (optimizer.psi.PsiConfig fields). The classes, the
    appearance embeddings and the backgrounds come from the job's assets and scene, the
    learnable parts from ``learnable``."""

    max_objects: int | None = Field(None, ge=1, le=8, description="Object slots per image (1..M objects).")
    azimuth_bins: int | None = Field(None, ge=1, le=MAX_AZIMUTH_BINS, description="Equal azimuth bins over 360 degrees.")
    temperature: float | None = Field(None, gt=0, le=100, description="Gumbel-softmax temperature at the start.")
    temperature_decay: float | None = Field(None, gt=0, le=1, description="Temperature factor per outer step.")
    temperature_min: float | None = Field(None, gt=0, le=100, description="Floor of the temperature schedule.")
    elevation_range_deg: Pair[Elevation] | None = \
        Field(None, description="(lo, hi) of the elevation, degrees; lo < hi.")
    elevation_median_deg: float | None = Field(None, ge=-90, le=90, description="Initial median elevation, degrees.")
    elevation_logit_std: float | None = Field(None, gt=0, le=10, description="Initial elevation spread (logit space).")
    distance_median: float | None = Field(None, gt=0, le=1000, description="Initial median camera distance, metres.")
    distance_log_std: float | None = Field(None, gt=0, le=10, description="Initial spread of log distance.")
    exposure_mean: float | None = Field(None, ge=-20, le=20, description="Initial mean exposure, stops.")
    exposure_std: float | None = Field(None, gt=0, le=10, description="Initial exposure spread, stops.")
    color_gain_log_std: float | None = Field(None, gt=0, le=10, description="Initial spread of log colour gains.")
    plain_background: bool | None = Field(None, description="Whether a plain colour is a background choice.")
    background_crop_side: Pair[Annotated[float, Field(gt=0, le=1)]] | None = \
        Field(None, description="(lo, hi) background crop side, fraction of the image's shorter side.")
    background_color_range: Pair[Probability] | None = \
        Field(None, description="(lo, hi) of each channel of the plain background colour.")
    offset_range: Pair[Probability] | None = \
        Field(None, description="Half-range (x, y) of the image-plane jitter, image half-sizes.")
    object_spacing: float | None = Field(None, ge=0, le=2, description="Distance between neighbouring objects, "
                                                                       "image half-sizes.")

    @model_validator(mode="after")
    def _consistent(self) -> "PsiOverrides":
        _ordered(self, ("elevation_range_deg", "background_crop_side", "background_color_range"))
        try:
            # The checks that need no scene: one class, and a background image so that
            # plain_background false is judged by the job (it knows procedural_backgrounds).
            PsiConfig(**self.model_dump(), num_backgrounds=1)
        except OptimizerError as error:
            raise ValueError(str(error).removeprefix("PsiConfig.")) from None
        return self


class OraclePsi(Strict):
    """The target's true distribution for method 'oracle' (optimizer.psi.Psi.from_target
    arguments): a per-class value is one number for all classes or a list of one per class; a
    probability row is normalised by the loop."""

    azimuth_bin_probs: BinRow | PerClass[BinRow] | None = Field(None, description="K bin probabilities, or a row per class.")
    elevation_median_deg: Elevation | PerClass[Elevation] | None = None
    elevation_logit_std: Positive | PerClass[Positive] | None = None
    distance_median: Positive | PerClass[Positive] | None = Field(None, description="Median camera distance, metres.")
    distance_log_std: Positive | PerClass[Positive] | None = None
    exposure_mean: Stops | PerClass[Stops] | None = None
    exposure_std: Positive | PerClass[Positive] | None = None
    color_gain_median: Channels | PerClass[Channels] | None = Field(None, description="3 channel gains, or a row per class.")
    color_gain_log_std: Positive | Channels | PerClass[Channels] | None = None
    appearance_probs: AppearanceRow | PerClass[AppearanceRow] | None = None
    background_probs: Annotated[list[Probability], Field(min_length=1, max_length=MAX_BACKGROUNDS + 1)] | None = None
    class_probs: Annotated[list[Probability], Field(min_length=1, max_length=MAX_CLASSES)] | None = None
    count_probs: Annotated[list[Probability], Field(min_length=1, max_length=8)] | None = None


# --------------------------------------------------------------------------------------------
# the final detector's trainer


class FinalTrainerOverrides(Strict):
    """Ultralytics train arguments of the final detector (see Ultralytics' ``default.yaml``).
    The loop sets ``nbs`` to final_batch_size unless given here."""

    optimizer: Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"] | None = None
    lr0: float | None = Field(None, gt=0, le=1, description="Initial learning rate.")
    lrf: float | None = Field(None, gt=0, le=1, description="Final learning rate as a fraction of lr0.")
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD momentum or Adam beta1.")
    weight_decay: float | None = Field(None, ge=0, le=0.1)
    warmup_epochs: float | None = Field(None, ge=0, le=100)
    cos_lr: bool | None = Field(None, description="Cosine learning-rate schedule.")
    patience: int | None = Field(None, ge=1, le=1000, description="Early stop after this many epochs without gain.")
    nbs: int | None = Field(None, ge=1, le=1024, description="Nominal batch size (gradient accumulation).")
    close_mosaic: int | None = Field(None, ge=0, le=1000, description="Last epochs without mosaic.")
    mosaic: Probability | None = None
    mixup: Probability | None = None
    hsv_h: Probability | None = None
    hsv_s: Probability | None = None
    hsv_v: Probability | None = None
    degrees: float | None = Field(None, ge=0, le=180)
    translate: Probability | None = None
    scale: Probability | None = None
    fliplr: Probability | None = None
    flipud: Probability | None = None


# --------------------------------------------------------------------------------------------
# advanced loop settings


class JobOptions(Strict):
    """Further settings of the closed loop (optimizer.config.OptimizeConfig fields; the
    docstrings there say what each does). Those the job's preset sets win over it when given."""

    inverse_hessian_steps: int | None = Field(None, ge=1, le=100)
    hessian_layers: HessianLayers | None = None
    hessian_product: HessianProduct | None = None
    damping: float | None = Field(None, ge=0, le=1000)
    neumann_scale: float | None = Field(None, gt=0, le=10)
    alignment_normalisation: AlignmentNormalisation | None = None
    pose_group: int | None = Field(None, ge=1, le=MAX_AZIMUTH_BINS)
    enumerate_bins: bool | None = None
    alignment_objective: JobAlignmentObjective | None = None
    baseline_decay: float | None = Field(None, ge=0, lt=1)
    search_metric: SearchMetric | None = None
    share_classes: bool | None = None
    oracle_psi: OraclePsi | None = None
    psi_learning_rate: float | None = Field(None, gt=0, le=10)
    psi_warmup_iterations: int | None = Field(None, ge=0, le=10_000)
    entropy_weight: float | None = Field(None, ge=0, le=100)
    inner_learning_rate: float | None = Field(None, gt=0, le=1)
    inner_optimizer: InnerOptimizer | None = None
    inner_batch_size: int | None = Field(None, ge=1, le=4096, description="Unset: all of the iteration's images.")
    warmup_steps: int | None = Field(None, ge=0, le=100_000)
    val_batch_size: int | None = Field(None, ge=1, le=1024)
    val_map_every: int | None = Field(None, ge=0, le=10_000)
    sample_images: int | None = Field(None, ge=0, le=64)
    final_batch_size: int | None = Field(None, ge=1, le=1024)
    final_image_size: int | None = Field(
        None, ge=32, le=1280, multiple_of=32,
        description="Longer side of the final dataset's images and the final detector's input. Unset: the "
                    "validation photos' longer side (rounded to a multiple of 32).")
    final_init: FinalInit | None = None
    final_trainer_overrides: FinalTrainerOverrides | None = None
    final_real_share: float | None = Field(None, ge=0, lt=1)
    real_only_baseline: bool | None = None
    uniform_baseline: bool | None = Field(None, description="false: no uniform-psi baseline arm in the report.")
    harvest_backgrounds: bool | None = None
    psi_priors: bool | None = None
    resting_poses: bool | None = None
    canonical_pose_share: float | None = Field(None, ge=0, le=1)
    several_objects: bool | None = None
    photometric: bool | None = Field(None, description="false: the final dataset's images stay plain renders.")

    def loop_settings(self) -> dict:
        """These settings as OptimizeConfig fields (``photometric``: its default effects, or None for off)."""
        settings = self.model_dump()
        if "photometric" in settings:
            settings["photometric"] = {} if settings["photometric"] else None
        return settings


_SECTION_OF = {
    "scene": ("scene", "spec"), "harvest_backgrounds": ("scene", None), "resting_poses": ("scene", None),
    "canonical_pose_share": ("scene", None), "several_objects": ("scene", None), "photometric": ("scene", None),
    "target_val": ("targets", "val"), "target_test": ("targets", "test"),
    **{name: ("budget", None) for name in ("outer_iterations", "images_per_iteration", "inner_steps", "final_images",
                                           "final_epochs")},
    **{name: ("outer", None) for name in ("method", "estimator", "enumerate_bins", "alignment_objective",
                                          "alignment_normalisation", "pose_group", "baseline_decay", "search_metric")},
    **{name: ("hypergradient", None) for name in ("inverse_hessian", "inverse_hessian_steps", "hessian_layers",
                                                  "hessian_product", "damping", "neumann_scale")},
    "learnable": ("psi", None), "share_classes": ("psi", None), "psi": ("psi", "initial"),
    "psi_priors": ("psi", "priors"),
    "oracle_psi": ("psi", "oracle"), "psi_learning_rate": ("psi", "learning_rate"),
    "psi_warmup_iterations": ("psi", "warmup_iterations"), "entropy_weight": ("psi", None),
    "detector": ("detector", "arch"), "detector_weights": ("detector", "weights"),
    **{name: ("detector", None) for name in ("image_size", "inner_learning_rate", "inner_optimizer", "inner_batch_size",
                                             "warmup_steps", "val_batch_size", "val_map_every", "sample_images")},
    "final_image_size": ("final", "image_size"), "final_batch_size": ("final", "batch_size"),
    "final_init": ("final", "init"),
    "final_trainer_overrides": ("final", "trainer_overrides"), "final_real_share": ("final", "real_share"),
    "real_only_baseline": ("final", None), "uniform_baseline": ("final", None),
}
"""A job field's (section, name) in OptimizeConfig (None: the same name); the JobSpec replaces this."""


def sectioned(settings: dict) -> dict:
    """A job's flat loop settings as OptimizeConfig.from_dict's nested ones (preset, seed and
    device stay at the top)."""
    nested: dict = {}
    for name, value in settings.items():
        if name not in _SECTION_OF:
            nested[name] = value
            continue
        section, field = _SECTION_OF[name]
        nested.setdefault(section, {})[field or name] = value
    return nested


def drop_retired(data, model: type[BaseModel]):
    """A stored ``model`` (parsed JSON) without the fields ``model`` no longer has, nested
    models included: records stored before the allowlists stay readable, and a queued job
    runs without the settings it may no longer name (server paths, trainer arguments)."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        nested = next((t for t in (field.annotation, *get_args(field.annotation))
                       if isinstance(t, type) and issubclass(t, BaseModel)), None)
        kept[name] = drop_retired(value, nested) if nested else value
    return kept


def worker_devices(settings) -> tuple[str, ...]:
    """The devices jobs may ask for besides 'auto' (ServiceSettings.worker_devices)."""
    if settings.worker_devices is not None:
        return tuple(settings.worker_devices)
    return _local_devices()


@cache
def _local_devices() -> tuple[str, ...]:
    import torch

    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
