"""What a closed-loop job is asked to do, and what it reports while it runs.

``OptimizeConfig`` is the loop's whole input besides the output folder (the service converts
its pydantic ``JobCreate`` into this at the API edge); it is plain JSON-able data, so a job is
reproducible from its config file. ``Progress`` is what the loop hands to ``on_progress``.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from optimizer.presets import DEFAULT_PRESET, PRESET_FIELDS, resolve

Method = Literal["neural-sim", "uniform", "random-search", "reinforce", "oracle"]
Estimator = Literal["pathwise", "score", "both", "lookahead"]
InverseHessian = Literal["identity", "neumann", "cg"]
HessianLayers = Literal["all", "head"]
HessianProduct = Literal["double-backward", "finite-difference"]
Stage = Literal["setup", "outer", "final-render", "final-train", "evaluate", "report", "done"]
InnerOptimizer = Literal["sgd", "adamw"]
AlignmentNormalisation = Literal["none", "standardise", "cosine"]
AlignmentObjective = Literal["mean", "mixture", "appearance"]
SearchMetric = Literal["map50_95", "val_loss"]
FinalInit = Literal["initial", "warmup"]
RESEARCH_FIELDS = ("lookahead_bin_share", "alignment_ignores", "normalise_hypergradient")
"""OptimizeConfig fields no preset uses: benchmarks/ sets them on the dataclass; a job cannot
(from_dict, the REST body and the CLI refuse them). Their findings: docs/findings.md."""
RESEARCH_VALUES = {"estimator": "lookahead", "alignment_objective": "mixture"}
"""Values no preset uses, refused the same way."""


@dataclass
class OptimizeConfig:
    """A closed-loop job. Degrees and metres, as at the API."""

    scene: str = "demo"
    """'demo' or the path of a scene.json (objects and backgrounds; see renderer.scene_spec)."""
    target_val: str | None = None
    """Labelled real validation set: a COCO json or a YOLO folder. Drives the outer loop."""
    target_test: str | None = None
    """Labelled real test set for the final evaluation (defaults to none: no test metrics)."""
    preset: str = field(default=DEFAULT_PRESET, metadata={"before": "neural-sim"})
    """The named method preset (optimizer.presets.PRESETS) that sets method, estimator,
    enumerate_bins, alignment_objective and alignment_normalisation; any of those given
    explicitly (not None) wins over the preset."""
    method: Method | None = None
    """The bi-level method, or a baseline run through the same code path (None: the preset's)."""
    estimator: Estimator | None = None
    """How d L_val / d psi is estimated (neural-sim only; optimizer.estimators): 'pathwise'
    (reparameterised parts only), 'score' (per-image gradient alignments as rewards), 'both'
    (pathwise for exposure and colour gain, score for the rest). 'lookahead' (benchmarks only)
    fine-tunes a detector copy per azimuth bin and scores it on the validation set; it learns
    the bins only and needs images_per_iteration to be a multiple of the number of bins.
    None: the preset's."""
    lookahead_bin_share: float = 1.0
    """Benchmarks only ('lookahead'): the share of each bin copy's fine-tuning images that show
    its bin; the rest are the iteration's images drawn in proportion to psi."""
    inverse_hessian: InverseHessian = "cg"
    """Inverse-Hessian-vector-product approximation in the hypergradient."""
    inverse_hessian_steps: int = 5
    hessian_layers: HessianLayers = "all"
    """Which detector weights the hypergradient's inverse Hessian acts on: 'all', or 'head' (the
    Detect head; the rest of the network is treated as fixed in the inner problem, so u is zero
    there and each Hessian-vector product runs through the head alone: optimizer.hessian)."""
    hessian_product: HessianProduct = "double-backward"
    """How the inverse-Hessian solve multiplies by the Hessian: 'finite-difference' (the
    difference of the training gradient at the weights and at a small step along the vector,
    the target assignment held fixed: one forward and backward pass per product;
    optimizer.hessian) or 'double-backward' (exact, by differentiating the training gradient
    again, which costs several training steps per product). The default stays exact until the
    shift benchmark shows the cheaper product closes as much of the gap."""
    damping: float = 0.01
    neumann_scale: float = 0.01
    """Step of the Neumann series: every eigenvalue of neumann_scale * (H + damping) must lie in
    (0, 2) for it to converge (unused by 'identity' and 'cg')."""
    alignment_normalisation: AlignmentNormalisation | None = None
    """How the score-function estimator turns per-image gradient alignments into rewards
    (optimizer.estimators.normalise_alignment). None: the preset's."""
    pose_group: int = 4
    """Neural-sim with the azimuth learnt by the score function: draw each outer iteration's
    images in groups of this many that share everything but the azimuth, and score each image
    against the mean of its group's others (optimizer.estimators.leave_one_out_baseline).
    1: independent images, moving-average baseline."""
    enumerate_bins: bool | None = None
    """Neural-sim with the azimuth learnt by the score function: render each group of
    azimuth_bins scenes at every bin and take the bins' gradient as the exact expectation over
    the bins (optimizer.estimators.enumerated_bin_gradient); the loop detector then fine-tunes
    on the images resampled in proportion to psi. images_per_iteration must be a multiple of
    the number of bins. No effect when the azimuth is not learnt. None: the preset's."""
    alignment_ignores: list[str] = field(default_factory=list)
    """Benchmarks only: prefixes of detector parameter names whose part of the gradients the
    score-function estimator's per-image alignment leaves out."""
    alignment_objective: AlignmentObjective | None = None
    """With enumerate_bins, what the azimuth bins follow: ``mean``, the mean per-image
    alignment of each bin's images; ``appearance``, no detector gradient: they descend the
    maximum mean discrepancy between the crops of psi's objects and those of the validation
    objects of their class (optimizer.appearance), summed over every iteration so far; the
    other score-function parts keep the mean per-image alignment. ``mixture`` (benchmarks
    only, needs cosine rewards): the cosine between u and psi's mean unit training gradient
    (optimizer.estimators.mixture_alignment_gradient). None: the preset's."""
    baseline_decay: float = 0.9
    """Decay of the moving-average reward baseline (score-function estimator, REINFORCE) and of
    the ``mixture`` alignment's running means."""
    search_metric: SearchMetric = "map50_95"
    """What random search keeps the best candidate by, REINFORCE's and the 'lookahead'
    estimator's reward: the validation mAP50-95 (higher is better) or the validation loss
    (lower is better)."""
    normalise_hypergradient: bool = True
    """Benchmarks only: scale psi's outer gradient to unit norm before the entropy bonus is
    added (False: the raw hypergradient)."""
    learnable: list[str] = field(default_factory=lambda: ["azimuth", "elevation", "distance", "exposure"])
    """Parts of psi that move (see optimizer.psi.PARTS); the rest stay at their initial values."""
    share_classes: bool = False
    """Learn one view and lighting distribution for all classes instead of one per class (the
    per-class rows of psi get the mean of their gradients, so rows that start equal stay equal):
    C times the samples per parameter, for targets whose shift is the same for every object.
    The appearance stays per class: its choices are each object's own training images."""
    psi: dict[str, Any] = field(default_factory=dict)
    """Overrides of optimizer.psi.PsiConfig fields (initial ranges, bins, temperature, ...)."""
    psi_priors: bool = field(default=True, metadata={"before": False})
    """Start psi where the validation photos are (optimizer.priors): each class's distance from
    its boxes' size and its object's size, the image offsets from the boxes' centres. Fields set
    in ``psi`` win over the priors; the report's ``priors`` entry says what was derived, from how
    many boxes, and what was applied. With share_classes the classes' distances move together,
    each from its own start. False: psi starts from PsiConfig's fixed ranges."""
    oracle_psi: dict[str, Any] | None = None
    """For method 'oracle': Psi.from_target keyword arguments (the target's true distribution)."""
    psi_learning_rate: float = 0.05
    psi_warmup_iterations: int = 0
    """Outer iterations over which psi's step grows linearly up to psi_learning_rate (iteration
    t steps with psi_learning_rate * min(1, (t + 1) / (psi_warmup_iterations + 1)))."""
    entropy_weight: float = 0.01
    """Weight of the azimuth-bin entropy bonus that guards against collapse onto one bin."""
    outer_iterations: int = 20
    images_per_iteration: int = 32
    """Images rendered per outer step (>= 30 recommended: per-sample alignment is noisy)."""
    inner_steps: int = 20
    """Detector fine-tuning steps per outer step (warm start)."""
    inner_learning_rate: float = 0.005
    inner_optimizer: InnerOptimizer = "adamw"
    """Detector optimiser of the inner loop (detector.train.finetune)."""
    inner_batch_size: int | None = None
    """Images per inner step, drawn from the iteration's images (None: all of them)."""
    warmup_steps: int = 100
    """Detector steps on images from the config's initial psi (for every method, the oracle's
    too) before the first outer iteration, in rounds of inner_steps steps on
    images_per_iteration fresh images each: the hypergradient of an untrained detector says
    little about psi."""
    val_batch_size: int = 64
    """Validation images per forward pass when computing the validation loss and gradient
    (BatchNorm batch statistics are taken per chunk)."""
    val_map_every: int = 1
    """Compute the validation mAP50-95 every this many outer iterations (0: never)."""
    sample_images: int = 4
    """Rendered images with their boxes drawn, saved under out_dir/samples/ at every outer
    iteration and handed to on_progress."""
    detector: str = "yolov8n-cpu"
    """Detector architecture (yolov8n, yolo11n, yolov8n-cpu) ..."""
    detector_weights: str | None = None
    """... or the path of an Ultralytics YOLO detection .pt to start from, read without running
    its code (detector.checkpoint). The service sets it to a job's uploaded weights (named by
    id in the request), never to a path from a request."""
    image_size: int = 64
    final_image_size: int | None = None
    """Longer side of the final dataset's images, at which the final detector (and the real-only
    baseline) trains and is evaluated; a multiple of 32. None: the validation photos' longer side
    rounded to a multiple of 32 (image_size when the job has no photos). The final images have
    the validation photos' most common aspect; the loop keeps searching at image_size."""
    photometric: dict[str, Any] | None = field(default_factory=dict, metadata={"before": None})
    """Photographic effects on the rendered images (renderer.photometric: unlabelled clutter
    behind the objects, feathered object edges, blur, exposure and tone curve, sensor noise,
    white balance, JPEG), as overrides of PhotometricConfig's fields: on the final dataset by
    default, with {"in_loop": true} the differentiable ones on the loop's renders too. None:
    plain renders, as before issue 23."""
    final_images: int = 200
    """Images rendered from the learned psi for the final dataset (0: no final stage, i.e. no
    dataset, final detector or test metrics; the report still has the loop's history)."""
    final_epochs: int = 10
    """Epochs of the final detector's training (Ultralytics' trainer)."""
    final_batch_size: int = 16
    """Batch size of the final detector's training."""
    final_init: FinalInit = "initial"
    """What the final detector starts from: 'initial', the initial weights (detector_weights,
    or a random initialisation from the seed); 'warmup', the detector after the warm-up, which
    trained on images from the config's initial psi for every method (the oracle's too), so all
    methods of one seed start their final detector from the same weights and differ only in
    the final dataset's psi. Needs warmup_steps >= 1."""
    final_trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Further Ultralytics train arguments for the final detector (e.g. {"mosaic": 0.0,
    "optimizer": "AdamW", "lr0": 0.002}). The loop sets nbs (the nominal batch Ultralytics
    accumulates gradients up to) to final_batch_size unless given here: with its default of
    64, a few hundred rendered images make only a handful of optimiser steps per epoch."""
    harvest_backgrounds: bool = field(default=True, metadata={"before": False})
    """Render on backgrounds cut from the validation photos away from every labelled box
    (renderer.harvest) instead of the scene's procedural textures (run_optimization; the
    scene's own background photos stay). Where no photo leaves a large enough box-free region,
    the run logs why and keeps the procedural textures."""
    final_real_share: float = field(default=1 / 3, metadata={"before": 0.0})
    """Share of each epoch of the final detector's training made of the job's labelled real
    photos (the validation set, target_val), each repeated to reach it, beside the rendered
    dataset (optimizer.real_training says why a third). The validation metrics in the report
    are then on photos the detector trained on. 0: the rendered dataset alone."""
    resting_poses: bool = field(default=True, metadata={"before": False})
    """Objects rest on a support plane in stable poses derived from their geometry
    (renderer.resting; psi's 'pose' part chooses among them, starting at their quasi-static
    probabilities with the canonical pose at RestingConfig.canonical_pose_share), the view's
    elevation is taken above that plane, and they cast contact shadows on the background.
    False: objects float in their canonical pose without shadows, as before issue 23."""
    canonical_pose_share: float = 1.0
    """With resting_poses: the probability of each object's own upright pose (how it stood when
    captured); its other stable poses share the rest by their geometric probabilities. Lower it
    for objects that lie in other poses in the photos (e.g. 0.5)."""
    several_objects: bool = False
    """Render up to as many objects per image as the validation photos have labelled boxes (at
    most 4), spaced so that neighbours overlap a little (optimizer.priors); False: one object
    per image unless ``psi`` sets max_objects."""
    uniform_baseline: bool = field(default=True, metadata={"before": False})
    """Also train the same detector with the same final dataset size and training on images
    rendered from the starting psi (no loop), evaluate both on the test set and report the
    difference with a bootstrap interval (optimizer.uniform_baseline). Without a test set, a
    quarter of the validation photos are held out of the whole run to be the test set (at least
    8 photos needed; fewer: no baseline, the report says why)."""
    real_only_baseline: bool = field(default=True, metadata={"before": False})
    """With a test set (target_test): also train the same detector with the same settings on
    the real photos alone and report its test metrics beside the final detector's."""
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        # The preset fills what the job left unset (None); explicit values stay.
        for name, value in resolve(self.preset, {name: getattr(self, name) for name in PRESET_FIELDS}).items():
            setattr(self, name, value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimizeConfig":
        """A job's config from its documented settings (the CLI's and the service's path);
        ValueError naming an unknown setting, preset or benchmark-only setting."""
        known = {f.name for f in fields(cls)} - set(RESEARCH_FIELDS)
        research = sorted(set(data) & set(RESEARCH_FIELDS))
        if research:
            raise ValueError(f"{research}: benchmark-only settings, not job settings (benchmarks/ sets them)")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown job settings {unknown}; known: {sorted(known)}")
        for name, value in RESEARCH_VALUES.items():
            if data.get(name) == value:
                raise ValueError(f"{name}: {value!r} is a benchmark-only value, not a job setting")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The settings in which a saved config (``to_dict()`` after a JSON round trip) differs
        from this one. A setting the saved config lacks (it predates the setting) counts as what
        that run did: the field's ``before`` metadata where the default changed what a run does
        (e.g. real photos in the final training), else its default."""
        defaults = {f.name: f.metadata["before"] if "before" in f.metadata else
                    f.default if f.default_factory is MISSING else f.default_factory() for f in fields(self)}
        wanted = json.loads(json.dumps(self.to_dict()))
        completed = json.loads(json.dumps({**defaults, **saved}))
        return sorted(k for k in set(wanted) | set(completed) if wanted.get(k) != completed.get(k))


@dataclass
class Progress:
    """One progress report of a running job."""

    stage: Stage
    iteration: int
    """Outer iteration (0-based) during 'outer'; otherwise the step within the stage."""
    total: int
    """Number of iterations or steps of this stage."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest numbers: val_loss, train_loss, hypergradient norm, mAP, ..."""
    psi: dict[str, Any] = field(default_factory=dict)
    """Psi snapshot (Psi.snapshot()): bin probabilities, elevation/distance/lighting stats."""
    samples: list[Path] = field(default_factory=list)
    """A few of the newest rendered images with their boxes drawn (PNG files in the job folder)."""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [str(p) for p in self.samples]
        return data
