"""The sections of a closed-loop job's config (optimizer.config.OptimizeConfig), each checking
its own fields: what the job renders and trains (the search's sections: optimizer.search_sections).
Degrees and metres, as at the API.

Every section declares ``warmup_reads``: which of its fields the warm-up reads (True: all,
False: none, or their names). Runs whose configs agree on those share one warm-up (the loop's
warmup_cache), so a field wrongly left out would let runs share a warm-up they should not; one
wrongly put in only costs a cache miss.

Torch-free on purpose (the API imports this module); validation imports what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

from optimizer.errors import OptimizerError

Method = Literal["neural-sim", "uniform", "random-search", "reinforce", "oracle"]
Estimator = Literal["pathwise", "score", "both", "lookahead"]
InverseHessian = Literal["identity", "neumann", "cg"]
HessianLayers = Literal["all", "head"]
HessianProduct = Literal["double-backward", "finite-difference"]
InnerOptimizer = Literal["sgd", "adamw"]
AlignmentNormalisation = Literal["none", "standardise", "cosine"]
AlignmentObjective = Literal["mean", "mixture", "appearance"]
SearchMetric = Literal["map50_95", "val_loss"]
FinalInit = Literal["initial", "warmup"]


def fail(name: str, problem: str) -> None:
    """Raise OptimizerError naming the setting ``name`` ('section.field')."""
    raise OptimizerError(f"OptimizeConfig.{name}: {problem}")


class Section:
    """What every section shares: its name in OptimizeConfig and the checks by field."""

    name: ClassVar[str]
    warmup_reads: ClassVar[bool | tuple[str, ...]]
    choices: ClassVar[dict[str, Any]] = {}
    """Field -> its Literal type: the value must be one of its arguments."""
    minimum: ClassVar[dict[str, int]] = {}
    """Field -> the smallest allowed value."""

    def warmup_settings(self) -> dict[str, Any]:
        """The fields the warm-up reads, by name."""
        reads = self.warmup_reads
        names = [f.name for f in fields(self)] if reads is True else list(reads or ())
        return {name: getattr(self, name) for name in names}

    def validate(self) -> None:
        """Raise OptimizerError naming the first field that cannot work."""
        unset = {f.name for f in fields(self) if f.default is None}  # None: filled later (the preset)
        for name, kind in self.choices.items():
            value, allowed = getattr(self, name), get_args(kind)
            if value not in allowed and not (value is None and name in unset):
                fail(f"{self.name}.{name}", f"unknown value {value!r}; use one of {list(allowed)}")
        for name, low in self.minimum.items():
            if getattr(self, name) < low:
                fail(f"{self.name}.{name}", f"must be >= {low}, got {getattr(self, name)}")
        self.check()

    def check(self) -> None:
        """The section's further rules (none by default)."""


@dataclass
class SceneConfig(Section):
    """What is rendered: the objects, their backgrounds, poses and photographic effects."""

    name: ClassVar[str] = "scene"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = True

    spec: str | dict[str, Any] = "demo"
    """'demo', the path of a scene.json, or the scene itself as a dict (objects and
    backgrounds; see renderer.scene_spec)."""
    harvest_backgrounds: bool = field(default=True, metadata={"before": False})
    """Render on backgrounds cut from the validation photos away from every labelled box
    (renderer.harvest) instead of the scene's procedural textures (the scene's own background
    photos stay). Where no photo leaves a large enough box-free region, the run logs why and
    keeps the procedural textures."""
    resting_poses: bool = field(default=True, metadata={"before": False})
    """Objects rest on a support plane in stable poses derived from their geometry
    (renderer.resting; psi's 'pose' part chooses among them), the view's elevation is taken
    above that plane, and they cast contact shadows on the background. False: objects float in
    their canonical pose without shadows."""
    canonical_pose_share: float = 1.0
    """With resting_poses: the probability of each object's own upright pose (how it stood when
    captured); its other stable poses share the rest by their geometric probabilities."""
    several_objects: bool = False
    """Render up to as many objects per image as the validation photos have labelled boxes (at
    most 4), spaced so that neighbours overlap a little (optimizer.priors); False: one object
    per image unless psi.initial sets max_objects."""
    photometric: dict[str, Any] | None = field(default_factory=dict, metadata={"before": None})
    """Photographic effects on the rendered images (renderer.photometric) as overrides of
    PhotometricConfig's fields: on the final dataset by default, with {"in_loop": true} the
    differentiable ones on the loop's renders too. None: plain renders."""

    def photometric_config(self):
        """The photographic effects as a renderer.photometric.PhotometricConfig, or None."""
        from renderer.photometric import PhotometricConfig  # imports torch

        if self.photometric is None:
            return None
        # JSON turns the tuples into lists.
        return PhotometricConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.photometric.items()})

    def check(self) -> None:
        from renderer.photometric import PhotometricError

        try:
            self.photometric_config()
        except (TypeError, PhotometricError) as error:
            fail("scene.photometric", str(error))


@dataclass
class TargetsConfig(Section):
    """The user's labelled real photos."""

    name: ClassVar[str] = "targets"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = False

    val: str | None = None
    """Labelled real validation set: a COCO json or a YOLO folder. Drives the outer loop."""
    test: str | None = None
    """Labelled real test set for the final evaluation (None: no test metrics)."""


@dataclass
class BudgetConfig(Section):
    """How much the job renders and trains."""

    name: ClassVar[str] = "budget"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = ("images_per_iteration", "inner_steps")
    minimum: ClassVar[dict[str, int]] = {"outer_iterations": 0, "images_per_iteration": 1, "inner_steps": 0,
                                         "final_images": 0, "final_epochs": 1}

    outer_iterations: int = 20
    """Outer iterations: steps of psi."""
    images_per_iteration: int = 32
    """Images rendered per outer step (>= 30 recommended: per-sample alignment is noisy)."""
    inner_steps: int = 20
    """Detector fine-tuning steps per outer step (warm start)."""
    final_images: int = 200
    """Images rendered from the learned psi for the final dataset (0: no final stage, i.e. no
    dataset, final detector or test metrics; the report still has the loop's history)."""
    final_epochs: int = 10
    """Epochs of the final detector's training (Ultralytics' trainer)."""


@dataclass
class DetectorSection(Section):
    """The detector and its training in the loop."""

    name: ClassVar[str] = "detector"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = (
        "arch", "weights", "image_size", "inner_learning_rate", "inner_optimizer", "inner_batch_size", "warmup_steps")
    choices: ClassVar[dict[str, Any]] = {"inner_optimizer": InnerOptimizer}
    minimum: ClassVar[dict[str, int]] = {"warmup_steps": 0, "val_batch_size": 1, "val_map_every": 0, "sample_images": 0}

    arch: str = "yolov8n-cpu"
    """Detector architecture (yolov8n, yolo11n, yolov8n-cpu) ..."""
    weights: str | None = None
    """... or the path of an Ultralytics YOLO detection .pt to start from, read without running
    its code (detector.checkpoint). The service sets it to a job's uploaded weights (named by
    id in the request), never to a path from a request."""
    image_size: int = 64
    """Side of the loop's square renders and the loop detector's input; a multiple of 32."""
    inner_learning_rate: float = 0.005
    """Learning rate of the inner loop's detector optimiser."""
    inner_optimizer: InnerOptimizer = "adamw"
    """Detector optimiser of the inner loop (detector.train.finetune)."""
    inner_batch_size: int | None = None
    """Images per inner step, drawn from the iteration's images (None: all of them)."""
    warmup_steps: int = 100
    """Detector steps on images from the config's initial psi (for every method, the oracle's
    too) before the first outer iteration, in rounds of budget.inner_steps steps on
    budget.images_per_iteration fresh images each: the hypergradient of an untrained detector
    says little about psi."""
    val_batch_size: int = 64
    """Validation images per forward pass when computing the validation loss and gradient
    (BatchNorm batch statistics are taken per chunk)."""
    val_map_every: int = 1
    """Compute the validation mAP50-95 every this many outer iterations (0: never)."""
    sample_images: int = 4
    """Rendered images with their boxes drawn, saved under out_dir/samples/ at every outer
    iteration and handed to on_progress."""

    def check(self) -> None:
        if self.inner_batch_size is not None and self.inner_batch_size < 1:
            fail("detector.inner_batch_size", f"must be >= 1 or None, got {self.inner_batch_size}")
        if not self.inner_learning_rate > 0:
            fail("detector.inner_learning_rate", f"must be > 0, got {self.inner_learning_rate}")
        if self.image_size <= 0 or self.image_size % 32:
            fail("detector.image_size",
                 f"must be a positive multiple of 32 (the detector's stride), got {self.image_size}")


@dataclass
class FinalConfig(Section):
    """The final stage: the final detector's training on the dataset from the learned psi, and
    the baselines the report compares it with."""

    name: ClassVar[str] = "final"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = False
    choices: ClassVar[dict[str, Any]] = {"init": FinalInit}
    minimum: ClassVar[dict[str, int]] = {"batch_size": 1}

    image_size: int | None = None
    """Longer side of the final dataset's images, at which the final detector (and the real-only
    baseline) trains and is evaluated; a multiple of 32. None: the validation photos' longer side
    rounded to a multiple of 32 (detector.image_size when the job has no photos). The final
    images have the validation photos' most common aspect; the loop keeps searching at
    detector.image_size."""
    batch_size: int = 16
    """Batch size of the final detector's training."""
    init: FinalInit = "initial"
    """What the final detector starts from: 'initial', the initial weights (detector.weights,
    or a random initialisation from the seed); 'warmup', the detector after the warm-up, which
    trained on images from the config's initial psi for every method (the oracle's too), so all
    methods of one seed start their final detector from the same weights and differ only in
    the final dataset's psi. Needs detector.warmup_steps >= 1."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Further Ultralytics train arguments for the final detector (e.g. {"mosaic": 0.0,
    "optimizer": "AdamW", "lr0": 0.002}). The loop sets nbs (the nominal batch Ultralytics
    accumulates gradients up to) to batch_size unless given here."""
    real_share: float = field(default=1 / 3, metadata={"before": 0.0})
    """Share of each epoch of the final detector's training made of the job's labelled real
    photos (the validation set, targets.val), each repeated to reach it, beside the rendered
    dataset (optimizer.real_training says why a third). The validation metrics in the report
    are then on photos the detector trained on. 0: the rendered dataset alone."""
    real_only_baseline: bool = field(default=True, metadata={"before": False})
    """With a test set (targets.test): also train the same detector with the same settings on
    the real photos alone and report its test metrics beside the final detector's."""
    uniform_baseline: bool = field(default=True, metadata={"before": False})
    """Also train the same detector with the same final dataset size and training on images
    rendered from the starting psi (no loop), evaluate both on the test set and report the
    difference with a bootstrap interval (optimizer.uniform_baseline). Without a test set, a
    quarter of the validation photos are held out of the whole run to be the test set (at least
    8 photos needed; fewer: no baseline, the report says why)."""

    def check(self) -> None:
        if self.image_size is not None and (self.image_size <= 0 or self.image_size % 32):
            fail("final.image_size", f"must be a positive multiple of 32 or None, got {self.image_size}")
        if not 0 <= self.real_share < 1:
            fail("final.real_share", f"must be in [0, 1), got {self.real_share}")
