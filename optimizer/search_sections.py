"""The sections of OptimizeConfig that say how psi is searched: the outer method, neural-sim's
hypergradient and psi itself (the others, and what every section shares: optimizer.sections).

Torch-free on purpose (the API imports this module); validation imports what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from optimizer.part_names import PARTS
from optimizer.sections import (
    AlignmentNormalisation,
    AlignmentObjective,
    Estimator,
    HessianLayers,
    HessianProduct,
    InverseHessian,
    Method,
    SearchMetric,
    Section,
    fail,
)


@dataclass
class OuterConfig(Section):
    """How psi is searched: the method and, for neural-sim, its estimator. The preset
    (OptimizeConfig.preset) fills the fields left None."""

    name: ClassVar[str] = "outer"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = False
    choices: ClassVar[dict[str, Any]] = {
        "method": Method, "estimator": Estimator, "alignment_normalisation": AlignmentNormalisation,
        "alignment_objective": AlignmentObjective, "search_metric": SearchMetric}
    minimum: ClassVar[dict[str, int]] = {"pose_group": 1}

    method: Method | None = None
    """The bi-level method, or a baseline run through the same code path (None: the preset's)."""
    estimator: Estimator | None = None
    """How d L_val / d psi is estimated (neural-sim only; optimizer.estimators): 'pathwise'
    (reparameterised parts only), 'score' (per-image gradient alignments as rewards), 'both'
    (pathwise for exposure and colour gain, score for the rest). 'lookahead' (benchmarks only)
    fine-tunes a detector copy per azimuth bin and scores it on the validation set; it learns
    the bins only and needs budget.images_per_iteration to be a multiple of the number of bins.
    None: the preset's."""
    enumerate_bins: bool | None = None
    """Neural-sim with the azimuth learnt by the score function: render each group of
    azimuth_bins scenes at every bin and take the bins' gradient as the exact expectation over
    the bins (optimizer.estimators.enumerated_bin_gradient); the loop detector then fine-tunes
    on the images resampled in proportion to psi. budget.images_per_iteration must be a
    multiple of the number of bins. No effect when the azimuth is not learnt. None: the preset's."""
    alignment_objective: AlignmentObjective | None = None
    """What psi follows: ``mean``, the detector's hypergradient (with enumerate_bins the azimuth
    bins take the mean per-image alignment of each bin's images); ``appearance``, no detector
    gradient: every learnable part descends the maximum mean discrepancy between features of
    psi's objects and images (crops, box sizes, colours, backgrounds) and the validation photos'
    (optimizer.appearance_objective), the class mix and object count their exact distance to the
    photos' frequencies. ``mixture`` (benchmarks only, needs cosine rewards): the bins follow the
    cosine between u and psi's mean unit training gradient
    (optimizer.estimators.mixture_alignment_gradient). None: the preset's."""
    appearance_parts: list[str] | None = None
    """With alignment_objective 'appearance': the learnable parts that follow it; the other
    learnable parts follow the detector's hypergradient (estimator). None: the preset's."""
    alignment_normalisation: AlignmentNormalisation | None = None
    """How the score-function estimator turns per-image gradient alignments into rewards
    (optimizer.estimators.normalise_alignment). None: the preset's."""
    pose_group: int = 4
    """Neural-sim with the azimuth learnt by the score function: draw each outer iteration's
    images in groups of this many that share everything but the azimuth, and score each image
    against the mean of its group's others (optimizer.estimators.leave_one_out_baseline).
    1: independent images, moving-average baseline."""
    baseline_decay: float = 0.9
    """Decay of the moving-average reward baseline (score-function estimator, REINFORCE) and of
    the ``mixture`` alignment's running means."""
    search_metric: SearchMetric = "map50_95"
    """What random search keeps the best candidate by, REINFORCE's and the 'lookahead'
    estimator's reward: the validation mAP50-95 (higher is better) or the validation loss
    (lower is better)."""
    lookahead_bin_share: float = 1.0
    """Benchmarks only ('lookahead'): the share of each bin copy's fine-tuning images that show
    its bin; the rest are the iteration's images drawn in proportion to psi."""
    alignment_ignores: list[str] = field(default_factory=list)
    """Benchmarks only: prefixes of detector parameter names whose part of the gradients the
    score-function estimator's per-image alignment leaves out."""
    normalise_hypergradient: bool = True
    """Benchmarks only: scale psi's outer gradient to unit norm before the entropy bonus is
    added (False: the raw hypergradient)."""

    def check(self) -> None:
        if not 0 <= self.baseline_decay < 1:
            fail("outer.baseline_decay", f"must be in [0, 1), got {self.baseline_decay}")
        if self.method != "neural-sim":
            return
        if self.estimator == "lookahead":
            if not 0 < self.lookahead_bin_share <= 1:
                fail("outer.lookahead_bin_share", f"must be in (0, 1], got {self.lookahead_bin_share}")
            return
        unknown = sorted(set(self.appearance_parts or ()) - set(PARTS))
        if unknown:
            fail("outer.appearance_parts", f"unknown parts {unknown}; the parts are {list(PARTS)}")
        if self.alignment_objective == "appearance" and not self.enumerate_bins:
            fail("outer.alignment_objective",
                 "'appearance' compares every scene's views at every bin, so it needs enumerate_bins")
        if self.alignment_objective == "mixture" and not (self.enumerate_bins and self.alignment_normalisation == "cosine"):
            fail("outer.alignment_objective", f"'mixture' weighs every scene's views by psi, so it needs enumerate_bins "
                                              f"and alignment_normalisation 'cosine', got enumerate_bins="
                                              f"{self.enumerate_bins} and {self.alignment_normalisation!r}")


@dataclass
class HypergradientConfig(Section):
    """The inverse-Hessian-vector product of neural-sim's hypergradient."""

    name: ClassVar[str] = "hypergradient"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = False
    choices: ClassVar[dict[str, Any]] = {
        "inverse_hessian": InverseHessian, "hessian_layers": HessianLayers, "hessian_product": HessianProduct}
    minimum: ClassVar[dict[str, int]] = {"inverse_hessian_steps": 1}

    inverse_hessian: InverseHessian = "cg"
    """Inverse-Hessian-vector-product approximation in the hypergradient."""
    inverse_hessian_steps: int = 5
    """Iterations of the Neumann series or of conjugate gradients."""
    hessian_layers: HessianLayers = "all"
    """Which detector weights the hypergradient's inverse Hessian acts on: 'all', or 'head' (the
    Detect head; the rest of the network is treated as fixed in the inner problem, so u is zero
    there and each Hessian-vector product runs through the head alone: optimizer.hessian)."""
    hessian_product: HessianProduct = field(default="finite-difference", metadata={"before": "double-backward"})
    """How the inverse-Hessian solve multiplies by the Hessian: 'finite-difference' (the
    difference of the training gradient at the weights and at a small step along the vector,
    the target assignment held fixed: one forward and backward pass per product;
    optimizer.hessian) or 'double-backward' (exact, by differentiating the training gradient
    again, which costs several training steps per product). A run saved before the field
    existed took exact products."""
    damping: float = 0.01
    """Added to the Hessian's diagonal before it is inverted."""
    neumann_scale: float = 0.01
    """Step of the Neumann series: every eigenvalue of neumann_scale * (H + damping) must lie in
    (0, 2) for it to converge (unused by 'identity' and 'cg')."""

    def check(self) -> None:
        if not self.neumann_scale > 0:
            fail("hypergradient.neumann_scale", f"must be > 0, got {self.neumann_scale}")
        if not self.damping >= 0:
            fail("hypergradient.damping", f"must be >= 0, got {self.damping}")


@dataclass
class PsiSettings(Section):
    """Psi, the distribution the scenes are drawn from: which parts move, where it starts and
    how it steps."""

    name: ClassVar[str] = "psi"
    warmup_reads: ClassVar[bool | tuple[str, ...]] = ("learnable", "share_classes", "initial", "priors")
    minimum: ClassVar[dict[str, int]] = {"warmup_iterations": 0}

    learnable: list[str] = field(default_factory=lambda: ["azimuth", "elevation", "distance", "exposure"])
    """Parts of psi that move (see optimizer.psi.PARTS); the rest stay at their initial values."""
    share_classes: bool = False
    """Learn one view and lighting distribution for all classes instead of one per class (the
    per-class rows of psi get the mean of their gradients, so rows that start equal stay equal):
    C times the samples per parameter, for targets whose shift is the same for every object.
    The appearance stays per class: its choices are each object's own training images."""
    initial: dict[str, Any] = field(default_factory=dict)
    """Overrides of optimizer.psi.PsiConfig fields (initial ranges, bins, temperature, ...)."""
    priors: bool = field(default=True, metadata={"before": False})
    """Start psi where the validation photos are (optimizer.priors): each class's distance from
    its boxes' size and its object's size, the image offsets from the boxes' centres. Fields set
    in ``initial`` win over the priors; the report's ``priors`` entry says what was derived, from
    how many boxes, and what was applied. With share_classes the classes' distances move
    together, each from its own start. False: psi starts from PsiConfig's fixed ranges."""
    oracle: dict[str, Any] | None = None
    """For method 'oracle': Psi.from_target keyword arguments (the target's true distribution)."""
    learning_rate: float = 0.05
    """Adam's step size on psi."""
    warmup_iterations: int = 0
    """Outer iterations over which psi's step grows linearly up to learning_rate (iteration t
    steps with learning_rate * min(1, (t + 1) / (warmup_iterations + 1)))."""
    entropy_weight: float = 0.01
    """Weight of the azimuth-bin entropy bonus that guards against collapse onto one bin."""

    def check(self) -> None:
        unknown = sorted(set(self.learnable) - set(PARTS))
        if unknown:
            fail("psi.learnable", f"unknown parts {unknown}; the parts are {list(PARTS)}")
        if not self.learning_rate > 0:
            fail("psi.learning_rate", f"must be > 0, got {self.learning_rate}")
        if not self.entropy_weight >= 0:
            fail("psi.entropy_weight", f"must be >= 0, got {self.entropy_weight}")
