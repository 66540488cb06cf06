"""The one shape of a closed-loop job: the REST body of ``POST /v1/jobs``, the file that
``nerfsim optimize --config`` reads and what :meth:`Client.create_job` sends.

Its sections are those of the loop's ``OptimizeConfig`` (the service builds that from it), with
bounds. Every model is an allowlist: an unknown field is refused, no value is coerced (``"3"``
and ``true`` are not numbers), every number has bounds and floats are finite. A field left
out (or null) keeps the loop's own default, so the stored and answered forms hold only what was
sent. No field can name an arbitrary Ultralytics argument, and at the service every reference
(assets, targets, backgrounds, weights) must be a record id: only ``nerfsim optimize`` reads
paths. Torch-free: the service checks what needs the loop (known psi parts, presets, the loop's
cross-section rules) and answers 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, List, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

MAX_CLASSES = 64
"""Most objects (assets) in a job."""
MAX_AZIMUTH_BINS = 72
"""Most azimuth bins (5 degrees each): every scene is rendered at each bin by some estimators."""
MAX_BACKGROUNDS = 256
"""Most procedural backgrounds."""
MAX_BACKGROUND_SETS = 32
"""Most background photo sets in a job."""
MAX_APPEARANCES = 10_000
"""Most appearance embeddings of an object (one per training image of a nerfstudio model)."""
DEFAULT_LEARNABLE = ("azimuth", "elevation", "distance", "exposure")
"""The parts of psi a job learns unless it names others."""

Reference = Annotated[str, Field(min_length=1, max_length=1024)]
"""A record id at the service (``<kind>-<16 hex digits>``); with ``nerfsim optimize`` also a path."""
Probability = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0, le=1000)]
Elevation = Annotated[float, Field(ge=-90, le=90)]
Stops = Annotated[float, Field(ge=-20, le=20)]
T = TypeVar("T")
PerClass = Annotated[List[T], Field(min_length=1, max_length=MAX_CLASSES)]
"""A list of one value per class (generic alias: ``PerClass[float]``)."""
Pair = Annotated[List[T], Field(min_length=2, max_length=2)]
"""(lo, hi) or (x, y): a JSON array of two (a strict tuple would refuse JSON's lists)."""
BinRow = Annotated[List[Probability], Field(min_length=1, max_length=MAX_AZIMUTH_BINS)]
Channels = Annotated[List[Positive], Field(min_length=3, max_length=3)]
AppearanceRow = Annotated[List[Probability], Field(min_length=1, max_length=MAX_APPEARANCES + 1)]


class Strict(BaseModel):
    """Forbids unknown fields and coercion; leaves unset (None) fields out of its dumps."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # No return annotation: it would replace the fields in the answers' OpenAPI schema.
    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        return {name: value for name, value in handler(self).items() if value is not None}


def _ordered(model: BaseModel, names: tuple) -> None:
    for name in names:
        value = getattr(model, name)
        if value is not None and value[0] > value[1]:
            raise ValueError(f"{name}: need lo <= hi, got {list(value)}")


# --------------------------------------------------------------------------------------------
# typed dictionaries of the loop: psi's start, the oracle's psi, the final trainer's arguments


class PsiOverrides(Strict):
    """Initial values and shape of psi (the loop's PsiConfig fields). The classes, the
    appearance embeddings and the backgrounds come from the job's assets and scene, the
    learnable parts from ``psi.learnable``."""

    max_objects: Optional[int] = Field(None, ge=1, le=8, description="Object slots per image (1..M objects).")
    azimuth_bins: Optional[int] = Field(None, ge=1, le=MAX_AZIMUTH_BINS, description="Equal azimuth bins over 360 degrees.")
    temperature: Optional[float] = Field(None, gt=0, le=100, description="Gumbel-softmax temperature at the start.")
    temperature_decay: Optional[float] = Field(None, gt=0, le=1, description="Temperature factor per outer step.")
    temperature_min: Optional[float] = Field(None, gt=0, le=100, description="Floor of the temperature schedule.")
    elevation_range_deg: Optional[Pair[Elevation]] = Field(None, description="(lo, hi) of the elevation, degrees; lo < hi.")
    elevation_median_deg: Optional[float] = Field(None, ge=-90, le=90, description="Initial median elevation, degrees.")
    elevation_logit_std: Optional[float] = Field(None, gt=0, le=10, description="Initial elevation spread (logit space).")
    distance_median: Optional[float] = Field(None, gt=0, le=1000, description="Initial median camera distance, metres.")
    distance_log_std: Optional[float] = Field(None, gt=0, le=10, description="Initial spread of log distance.")
    exposure_mean: Optional[float] = Field(None, ge=-20, le=20, description="Initial mean exposure, stops.")
    exposure_std: Optional[float] = Field(None, gt=0, le=10, description="Initial exposure spread, stops.")
    color_gain_log_std: Optional[float] = Field(None, gt=0, le=10, description="Initial spread of log colour gains.")
    plain_background: Optional[bool] = Field(None, description="Whether a plain colour is a background choice.")
    background_crop_side: Optional[Pair[Annotated[float, Field(gt=0, le=1)]]] = \
        Field(None, description="(lo, hi) background crop side, fraction of the image's shorter side.")
    background_color_range: Optional[Pair[Probability]] = \
        Field(None, description="(lo, hi) of each channel of the plain background colour.")
    offset_range: Optional[Pair[Probability]] = \
        Field(None, description="Half-range (x, y) of the image-plane jitter, image half-sizes.")
    object_spacing: Optional[float] = Field(None, ge=0, le=2, description="Distance between neighbouring objects, "
                                                                          "image half-sizes.")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "PsiOverrides":
        _ordered(self, ("elevation_range_deg", "background_crop_side", "background_color_range"))
        return self


class OraclePsi(Strict):
    """The target's true distribution for method 'oracle' (the loop's Psi.from_target
    arguments): a per-class value is one number for all classes or a list of one per class; a
    probability row is normalised by the loop."""

    azimuth_bin_probs: Optional[Union[BinRow, PerClass[BinRow]]] = \
        Field(None, description="K bin probabilities, or a row per class.")
    elevation_median_deg: Optional[Union[Elevation, PerClass[Elevation]]] = None
    elevation_logit_std: Optional[Union[Positive, PerClass[Positive]]] = None
    distance_median: Optional[Union[Positive, PerClass[Positive]]] = \
        Field(None, description="Median camera distance, metres.")
    distance_log_std: Optional[Union[Positive, PerClass[Positive]]] = None
    exposure_mean: Optional[Union[Stops, PerClass[Stops]]] = None
    exposure_std: Optional[Union[Positive, PerClass[Positive]]] = None
    color_gain_median: Optional[Union[Channels, PerClass[Channels]]] = \
        Field(None, description="3 channel gains, or a row per class.")
    color_gain_log_std: Optional[Union[Positive, Channels, PerClass[Channels]]] = None
    appearance_probs: Optional[Union[AppearanceRow, PerClass[AppearanceRow]]] = None
    background_probs: Optional[Annotated[List[Probability], Field(min_length=1, max_length=MAX_BACKGROUNDS + 1)]] = None
    class_probs: Optional[Annotated[List[Probability], Field(min_length=1, max_length=MAX_CLASSES)]] = None
    count_probs: Optional[Annotated[List[Probability], Field(min_length=1, max_length=8)]] = None


class FinalTrainerOverrides(Strict):
    """Ultralytics train arguments of the final detector (see Ultralytics' ``default.yaml``).
    The loop sets ``nbs`` to ``final.batch_size`` unless given here."""

    optimizer: Optional[Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"]] = None
    lr0: Optional[float] = Field(None, gt=0, le=1, description="Initial learning rate.")
    lrf: Optional[float] = Field(None, gt=0, le=1, description="Final learning rate as a fraction of lr0.")
    momentum: Optional[float] = Field(None, ge=0, lt=1, description="SGD momentum or Adam beta1.")
    weight_decay: Optional[float] = Field(None, ge=0, le=0.1)
    warmup_epochs: Optional[float] = Field(None, ge=0, le=100)
    cos_lr: Optional[bool] = Field(None, description="Cosine learning-rate schedule.")
    patience: Optional[int] = Field(None, ge=1, le=1000, description="Early stop after this many epochs without gain.")
    nbs: Optional[int] = Field(None, ge=1, le=1024, description="Nominal batch size (gradient accumulation).")
    close_mosaic: Optional[int] = Field(None, ge=0, le=1000, description="Last epochs without mosaic.")
    mosaic: Optional[Probability] = None
    mixup: Optional[Probability] = None
    hsv_h: Optional[Probability] = None
    hsv_s: Optional[Probability] = None
    hsv_v: Optional[Probability] = None
    degrees: Optional[float] = Field(None, ge=0, le=180)
    translate: Optional[Probability] = None
    scale: Optional[Probability] = None
    fliplr: Optional[Probability] = None
    flipud: Optional[Probability] = None


# --------------------------------------------------------------------------------------------
# the sections (optimizer.config's, same names; the docstrings there say what each setting does)


class SceneSection(Strict):
    """What is drawn: the objects, the backgrounds and how they are put together."""

    assets: List[Reference] = Field(min_length=1, max_length=MAX_CLASSES,
                                    description="The objects, one class each, in class order: asset ids (with "
                                                "nerfsim optimize also asset folders or nerfstudio config.yml paths).")
    backgrounds: List[Reference] = Field(
        default_factory=list, max_length=MAX_BACKGROUND_SETS,
        description="Background photo sets the scenes are composed on: ids of uploaded sets (POST "
                    "/v1/backgrounds), with nerfsim optimize also folders of photos.")
    procedural_backgrounds: Optional[int] = Field(
        None, ge=0, le=MAX_BACKGROUNDS,
        description="Generated textures added to the backgrounds. Default: 4 when the job has no photo "
                    "backgrounds (its `backgrounds`, or harvested from its labelled photos), none when it has.")
    fov_deg: float = Field(40.0, gt=1, lt=170, description="Horizontal field of view of the camera, degrees.")
    harvest_backgrounds: Optional[bool] = Field(None, description="Backgrounds cut from the validation photos "
                                                                  "away from their labelled boxes.")
    resting_poses: Optional[bool] = Field(None, description="Objects rest on a support plane in stable poses.")
    canonical_pose_share: Optional[float] = Field(None, ge=0, le=1, description="With resting_poses: the "
                                                  "probability of each object's own upright pose.")
    several_objects: Optional[bool] = Field(None, description="Up to as many objects per image as the "
                                                              "validation photos have boxes (at most 4).")
    photometric: Optional[bool] = Field(None, description="false: the final dataset's images stay plain renders.")

    @field_validator("backgrounds")
    @classmethod
    def _distinct_sets(cls, value: List[str]) -> List[str]:
        repeated = sorted({b for b in value if value.count(b) > 1})
        if repeated:
            raise ValueError(f"background sets listed more than once: {repeated}")
        return value


class TargetsSection(Strict):
    """The customer's labelled real photos."""

    val: Reference = Field(description="The labelled validation set that drives the loop: a target id (with "
                                        "nerfsim optimize also a COCO json or a YOLO folder).")
    test: Optional[Reference] = Field(None, description="The labelled test set of the final metrics (same kinds).")


class BudgetSection(Strict):
    """How much work the job may do."""

    outer_iterations: int = Field(20, ge=1, le=10_000, description="Outer iterations (steps of psi).")
    images_per_iteration: int = Field(32, ge=1, le=4096, description="Images rendered per outer iteration.")
    inner_steps: int = Field(20, ge=1, le=10_000, description="Detector fine-tuning steps per outer iteration.")
    final_images: int = Field(200, ge=1, le=1_000_000, description="Images of the final dataset.")
    final_epochs: int = Field(10, ge=1, le=1000, description="Epochs of the final detector's training.")


class OuterSection(Strict):
    """How psi is stepped. The preset fills method, estimator, enumerate_bins,
    alignment_objective, appearance_parts and alignment_normalisation; those given here win over it."""

    method: Optional[Literal["neural-sim", "uniform", "random-search", "reinforce", "oracle"]] = \
        Field(None, description="The bi-level method or a baseline (default: the preset's).")
    estimator: Optional[Literal["pathwise", "score", "both"]] = \
        Field(None, description="How neural-sim estimates the gradient of the validation loss (default: the preset's).")
    enumerate_bins: Optional[bool] = None
    alignment_objective: Optional[Literal["mean", "appearance"]] = None
    appearance_parts: Optional[List[str]] = Field(
        None, max_length=16, description="With alignment_objective 'appearance': the learnable parts that follow "
                                         "the look of the photos; the others follow the detector's hypergradient.")
    alignment_normalisation: Optional[Literal["none", "standardise", "cosine"]] = None
    pose_group: Optional[int] = Field(None, ge=1, le=MAX_AZIMUTH_BINS)
    baseline_decay: Optional[float] = Field(None, ge=0, lt=1)
    search_metric: Optional[Literal["map50_95", "val_loss"]] = None


class HypergradientSection(Strict):
    """The inverse-Hessian approximation of neural-sim's hypergradient."""

    inverse_hessian: Optional[Literal["identity", "neumann", "cg"]] = None
    inverse_hessian_steps: Optional[int] = Field(None, ge=1, le=100)
    hessian_layers: Optional[Literal["all", "head"]] = None
    hessian_product: Optional[Literal["double-backward", "finite-difference"]] = None
    damping: Optional[float] = Field(None, ge=0, le=1000)
    neumann_scale: Optional[float] = Field(None, gt=0, le=10)


class PsiSection(Strict):
    """The scene-parameter distribution: what moves, where it starts, how fast it moves."""

    learnable: List[str] = Field(list(DEFAULT_LEARNABLE), max_length=16,  # (copied per instance: in the schema)
                                 description="Parts of psi that move (GET /v1/presets lists the parts).")
    share_classes: Optional[bool] = None
    initial: PsiOverrides = Field(default_factory=PsiOverrides, description="Initial values and shape of psi.")
    priors: Optional[bool] = Field(None, description="Start psi where the validation photos are.")
    oracle: Optional[OraclePsi] = Field(None, description="The target's true distribution (method 'oracle').")
    learning_rate: Optional[float] = Field(None, gt=0, le=10)
    warmup_iterations: Optional[int] = Field(None, ge=0, le=10_000)
    entropy_weight: Optional[float] = Field(None, ge=0, le=100)


class DetectorSection(Strict):
    """The detector the loop trains and the final detector starts as."""

    arch: Literal["yolov8n", "yolo11n", "yolov8n-cpu"] = Field("yolov8n-cpu", description="Detector architecture.")
    weights: Optional[Reference] = Field(
        None, description="Weights the detector starts from: an id of uploaded weights (POST /v1/weights) sharing "
                          "a class name with the assets (with nerfsim optimize also a .pt path). Default: a random "
                          "initialisation of `arch`.")
    image_size: int = Field(64, ge=32, le=1280, multiple_of=32,
                            description="Image side of the loop's renders (a multiple of 32: the detector's stride).")
    inner_learning_rate: Optional[float] = Field(None, gt=0, le=1)
    inner_optimizer: Optional[Literal["sgd", "adamw"]] = None
    inner_batch_size: Optional[int] = Field(None, ge=1, le=4096, description="Unset: all of the iteration's images.")
    warmup_steps: Optional[int] = Field(None, ge=0, le=100_000)
    val_batch_size: Optional[int] = Field(None, ge=1, le=1024)
    val_map_every: Optional[int] = Field(None, ge=0, le=10_000)
    sample_images: Optional[int] = Field(None, ge=0, le=64)


class FinalSection(Strict):
    """The final dataset and the final detector trained on it."""

    image_size: Optional[int] = Field(
        None, ge=32, le=1280, multiple_of=32,
        description="Longer side of the final dataset's images and the final detector's input. Unset: the "
                    "validation photos' longer side (rounded to a multiple of 32).")
    batch_size: Optional[int] = Field(None, ge=1, le=1024)
    init: Optional[Literal["initial", "warmup"]] = None
    trainer_overrides: Optional[FinalTrainerOverrides] = None
    real_share: Optional[float] = Field(None, ge=0, lt=1, description="Share of real photos in each epoch.")
    real_only_baseline: Optional[bool] = None
    uniform_baseline: Optional[bool] = Field(None, description="false: no uniform-psi baseline arm in the report.")


class JobSpec(Strict):
    """A closed-loop job: the REST body of ``POST /v1/jobs``, ``nerfsim optimize --config``'s
    file and :meth:`Client.create_job`'s argument."""

    preset: Optional[str] = Field(None, description="The method preset (GET /v1/presets; default: the service's "
                                                    "default); settings in `outer` win over it.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scene: SceneSection
    targets: TargetsSection
    budget: BudgetSection = Field(default_factory=BudgetSection)
    outer: OuterSection = Field(default_factory=OuterSection)
    hypergradient: HypergradientSection = Field(default_factory=HypergradientSection)
    psi: PsiSection = Field(default_factory=PsiSection)
    detector: DetectorSection = Field(default_factory=DetectorSection)
    final: FinalSection = Field(default_factory=FinalSection)

    @model_validator(mode="after")
    def _something_to_draw(self) -> "JobSpec":
        if (self.psi.initial.plain_background is False and self.scene.procedural_backgrounds == 0
                and not self.scene.backgrounds):
            raise ValueError("psi.initial.plain_background false needs scene.backgrounds or "
                             "scene.procedural_backgrounds >= 1: nothing to draw")
        return self


def job_spec(spec: Union[JobSpec, dict], preset: Any = None) -> JobSpec:
    """``spec`` as a JobSpec (a dict is validated; a record object such as an Asset may stand
    for its id), with ``preset`` (a name or a Preset) set when given."""
    if isinstance(spec, dict):
        spec = JobSpec.model_validate(_ids(spec))
    if preset is not None:
        spec = spec.model_copy(update={"preset": getattr(preset, "name", preset)})
    return spec


def _ids(value: Any) -> Any:
    """A dict with record objects (anything with an ``id``) replaced by their ids."""
    if isinstance(value, dict):
        return {key: _ids(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_ids(item) for item in value]
    return getattr(value, "id", value)
