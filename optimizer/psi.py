"""psi: the distribution of scene parameters that the outer loop learns.

One distribution per class (class ``c`` renders object ``c`` of the scene's object list) for
the view and the lighting (exposure, colour gain, appearance), and one distribution per image
for the class mix, the number of objects and the background. Each part is either learnable
(``nn.Parameter``) or fixed (a buffer), per :class:`PsiConfig`.

Parts and how they are sampled:

- ``azimuth``: K equal bins over [0, 2pi). A bin is drawn by Gumbel-max (so it is drawn with
  exactly the bin probabilities), then a uniform offset inside it, as in Neural-Sim. The value
  is the hard one (exactly inside the chosen bin); its gradient is the straight-through
  Gumbel-softmax one: ``d azimuth / d logits = d/d logits sum_k softmax((logits + g)/tau)_k
  * (k + u) * width``, so it is biased and depends on the temperature ``tau``.
- ``elevation``: logit-normal on the configured range, ``lo + (hi - lo) * sigmoid(mu + s*eps)``.
  Chosen over bins because it is reparameterised without bias and has a closed-form density.
- ``distance``: log-normal, ``exp(mu + s*eps)`` metres.
- ``exposure``: normal, ``mu + s*eps`` stops.
- ``color_gain``: log-normal per channel around 1, ``exp(mu + s*eps)``.
- ``appearance``: categorical over the average appearance (id -1, the first choice) and, for
  an object whose model has per-training-image appearance embeddings (nerfstudio's
  nerfacto), each of them (ids 0..n-1). Objects without embeddings have only the average.
- ``pose``: categorical over the class's object's resting poses on the support plane
  (renderer.resting): the canonical pose (id -1, the first choice), then its stable poses
  (ids 0..n-1), starting at the pose table's probabilities (``PsiConfig.pose_probs``). Without
  pose tables there is no support plane and the scenes have no pose ids.
- ``background``: categorical over the background images, plus the plain-colour option last.
- ``class_mix``: categorical over classes, drawn independently for each object slot.
- ``count``: categorical over 1..max_objects objects per image.

Roll is 0; image-plane offsets, background crops and plain colours are uniform and fixed.
``class_mix``, ``count``, ``background``, ``appearance`` and ``pose`` have no pathwise gradient (the
renderer gets integers); they learn only through :meth:`Psi.log_prob` (score function).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.nn import functional as F

from renderer.scene_types import SceneParams


class OptimizerError(ValueError):
    """A bad input to the optimizer package (a config value, a part name, a probability table)."""


PARTS: tuple[str, ...] = (
    "azimuth",
    "elevation",
    "distance",
    "exposure",
    "color_gain",
    "appearance",
    "background",
    "class_mix",
    "count",
    "pose",
)
"""Every part of psi, in the order used by configs, snapshots and parameter groups."""

REPARAMETERISED_PARTS: frozenset[str] = frozenset({"azimuth", "elevation", "distance", "exposure", "color_gain"})
"""Parts whose sampled values carry a pathwise gradient (azimuth through the straight-through
Gumbel-softmax, the others exactly)."""

GEOMETRIC_PARTS: frozenset[str] = frozenset({"azimuth", "elevation", "distance"})
"""Parts that move the object in the image, and with it its box. The boxes reach the detection
loss as constants (Ultralytics assigns targets without gradients, and detector.targets detaches
them), so a pathwise derivative through the pixels alone sees the object move inside a box
that stays put: biased. Measured: on the zoom shift it moved the median distance away from the
target (0.6 -> 0.84 m, target 0.33 m) where the score function moved it toward (0.6 -> 0.26 m)."""

DISCRETE_PARTS: frozenset[str] = frozenset({"azimuth", "appearance", "background", "class_mix", "count", "pose"})
"""Parts with a discrete choice (for azimuth: the bin), i.e. those a score-function estimator
handles without relaxation bias."""

PER_CLASS_PARTS: frozenset[str] = frozenset({"azimuth", "elevation", "distance", "exposure", "color_gain"})
"""Parts with one distribution per class over the same values for every class (their tensors'
first dimension is the class), so classes can share one. ``appearance`` is per class too, but
its choices are each object's own training images, which mean nothing for another object."""

_PART_TENSORS: dict[str, tuple[str, ...]] = {
    "azimuth": ("azimuth_logits",),
    "elevation": ("elevation_loc", "elevation_log_scale"),
    "distance": ("distance_loc", "distance_log_scale"),
    "exposure": ("exposure_loc", "exposure_log_scale"),
    "color_gain": ("color_gain_loc", "color_gain_log_scale"),
    "appearance": ("appearance_logits",),
    "background": ("background_logits",),
    "class_mix": ("class_logits",),
    "count": ("count_logits",),
    "pose": ("pose_logits",),
}

_PER_CLASS_FIELDS = ("elevation_median_deg", "elevation_logit_std", "distance_median", "distance_log_std")
"""PsiConfig fields that take one value for all classes or one per class."""

_Z90 = 1.2815515655446004
"""Standard-normal 90% quantile: snapshots report the 10% and 90% quantiles."""


@dataclass
class PsiConfig:
    """Shape, initial values and learnability of :class:`Psi`. Degrees and metres."""

    num_classes: int = 1
    """C: one view/lighting distribution per class; class c renders object c of the scene."""
    max_objects: int = 1
    """M: object slots per image; the number of objects is drawn from 1..M."""
    azimuth_bins: int = 8
    """K: equal azimuth bins over [0, 360) degrees; bin k starts at k * 360 / K."""
    temperature: float = 1.0
    """Gumbel-softmax temperature at schedule step 0. It shapes only the azimuth gradient: the
    sampled value always uses the hard bin."""
    temperature_decay: float = 1.0
    """Factor applied to the temperature at every :meth:`Psi.step_temperature` (exponential
    decay); 1 keeps it constant."""
    temperature_min: float = 0.1
    """Floor of the temperature schedule."""
    elevation_range_deg: tuple[float, float] = (0.0, 60.0)
    """(lo, hi): elevations are squashed into this open interval."""
    elevation_median_deg: float | tuple[float, ...] = 25.0
    """Initial median elevation (the sigmoid's centre maps here): one for all classes, or one
    per class (as for the three fields below)."""
    elevation_logit_std: float | tuple[float, ...] = 1.0
    """Initial spread of the elevation in logit space (about 1.7 is close to uniform on the range)."""
    distance_median: float | tuple[float, ...] = 0.6
    """Initial median camera distance, metres (depth of the object's centre). Per class when the
    starting psi comes from the validation photos (optimizer.priors): objects differ in size."""
    distance_log_std: float | tuple[float, ...] = 0.2
    """Initial standard deviation of log distance."""
    exposure_mean: float = 0.0
    """Initial mean exposure, stops (colours are multiplied by 2**exposure)."""
    exposure_std: float = 0.3
    """Initial standard deviation of the exposure, stops."""
    color_gain_log_std: float = 0.05
    """Initial standard deviation of each channel's log colour gain (the median gain is 1)."""
    appearance_embeddings: tuple[int, ...] = ()
    """Per class, how many per-training-image appearance embeddings its object's model has
    (ids 0..n-1; nerfstudio's nerfacto has one per training image, nerfsim's own fields
    none); empty: no object has any. Class c chooses between the average appearance and its
    n embeddings, initially uniformly."""
    pose_probs: tuple[tuple[float, ...], ...] = ()
    """Per class, the initial probabilities of its object's resting poses on the support plane:
    the canonical pose (id -1) first, then poses 0..n-1 of its pose table (renderer.resting's
    PoseTable.choice_probs). Empty: no support plane (scenes without pose ids)."""
    num_backgrounds: int = 0
    """Number of background images the renderer was given (ids 0..num_backgrounds-1)."""
    plain_background: bool = True
    """Whether a plain colour (background id -1) is one of the background choices."""
    background_crop_side: tuple[float, float] = (0.5, 1.0)
    """Range of the background crop's side, as a fraction of the image's shorter side."""
    background_color_range: tuple[float, float] = (0.0, 1.0)
    """Range of each channel of the plain background colour."""
    offset_centre: tuple[float, float] = (0.0, 0.0)
    """(x, y) centre of the image-plane jitter of each object's centre (the middle of the row
    when an image has several objects), in units of the image half-size, y up."""
    offset_range: tuple[float, float] = (0.2, 0.2)
    """Half-range (x, y) of the uniform image-plane jitter of each object's centre around
    offset_centre, in units of the image half-size. With several objects the x jitter is capped at object_spacing / 4 so
    neighbours keep their order and their centres stay object_spacing / 2 apart."""
    object_spacing: float = 0.6
    """Distance between neighbouring object centres along x (image half-size units) when an
    image has several objects; they are placed side by side, centred on the image. Whether
    neighbours overlap, and how much, depends on their apparent size: choose it with the
    distance range so that they overlap only partly."""
    learn_azimuth: bool = True
    """Learn the per-class azimuth bin probabilities (else they stay at their initial values)."""
    learn_elevation: bool = True
    """Learn the per-class elevation median and spread."""
    learn_distance: bool = True
    """Learn the per-class distance median and spread."""
    learn_exposure: bool = True
    """Learn the per-class exposure mean and spread."""
    learn_color_gain: bool = True
    """Learn the per-class colour gain median and spread, per channel."""
    learn_appearance: bool = True
    """Learn the per-class probabilities of the average appearance and of each embedding."""
    learn_background: bool = True
    """Learn the background probabilities."""
    learn_class_mix: bool = True
    """Learn the class probabilities."""
    learn_count: bool = True
    """Learn the probabilities of 1..max_objects objects per image."""
    learn_pose: bool = True
    """Learn the per-class resting pose probabilities."""

    def __post_init__(self) -> None:
        def fail(name: str, problem: str) -> None:
            raise OptimizerError(f"PsiConfig.{name}: {problem}")

        for name in ("num_classes", "max_objects", "azimuth_bins"):
            if getattr(self, name) < 1:
                fail(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.temperature_min > 0:
            fail("temperature", f"temperature and temperature_min must be > 0, got {self.temperature}, {self.temperature_min}")
        if not 0 < self.temperature_decay <= 1:
            fail("temperature_decay", f"must be in (0, 1], got {self.temperature_decay}")
        lo, hi = self.elevation_range_deg
        if not -90 <= lo < hi <= 90:
            fail("elevation_range_deg", f"need -90 <= lo < hi <= 90, got {self.elevation_range_deg}")
        for name in _PER_CLASS_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) and len(value) != self.num_classes:
                fail(name, f"needs one value for all classes or one per class ({self.num_classes}), got {value}")
        if not all(lo < median < hi for median in self.per_class("elevation_median_deg")):
            fail("elevation_median_deg", f"must lie strictly inside elevation_range_deg {self.elevation_range_deg}")
        for name in ("elevation_logit_std", "distance_median", "distance_log_std", "exposure_std", "color_gain_log_std"):
            if not all(value > 0 for value in self.per_class(name)):
                fail(name, f"must be > 0, got {getattr(self, name)}")
        embeddings = self.appearance_embeddings
        if embeddings and len(embeddings) != self.num_classes:
            fail("appearance_embeddings", f"needs one count per class ({self.num_classes}) or none, got {embeddings}")
        if any(count < 0 for count in embeddings):
            fail("appearance_embeddings", f"counts must be >= 0, got {embeddings}")
        if self.pose_probs and (len(self.pose_probs) != self.num_classes or any(
                not row or min(row) < 0 or not sum(row) > 0 for row in self.pose_probs)):
            fail("pose_probs", f"needs one row of non-negative probabilities (not all 0) per class ({self.num_classes}) "
                               f"or none, got {self.pose_probs}")
        if self.num_backgrounds < 0:
            fail("num_backgrounds", f"must be >= 0, got {self.num_backgrounds}")
        if self.num_backgrounds == 0 and not self.plain_background:
            fail("plain_background", "no background images and no plain colour leaves nothing to draw")
        side_lo, side_hi = self.background_crop_side
        if not 0 < side_lo <= side_hi <= 1:
            fail("background_crop_side", f"need 0 < lo <= hi <= 1, got {self.background_crop_side}")
        color_lo, color_hi = self.background_color_range
        if not 0 <= color_lo <= color_hi <= 1:
            fail("background_color_range", f"need 0 <= lo <= hi <= 1, got {self.background_color_range}")
        if min(self.offset_range) < 0:
            fail("offset_range", f"must be >= 0, got {self.offset_range}")
        if self.object_spacing < 0:
            fail("object_spacing", f"must be >= 0, got {self.object_spacing}")
        jitter_x = self.offset_range[0] if self.max_objects == 1 else min(self.offset_range[0], self.object_spacing / 4)
        if abs(self.offset_centre[0]) + self.object_spacing * (self.max_objects - 1) / 2 + jitter_x >= 1:
            fail("object_spacing", "the outermost object centre can leave the image; reduce object_spacing, offset_range or offset_centre")

    def per_class(self, name: str) -> tuple[float, ...]:
        """Field ``name``'s value for each class (a single value repeated)."""
        value = getattr(self, name)
        return (float(value),) * self.num_classes if isinstance(value, numbers.Real) else tuple(map(float, value))

    @property
    def num_background_choices(self) -> int:
        """Background images plus the plain-colour option (the last choice), if enabled."""
        return self.num_backgrounds + int(self.plain_background)

    @property
    def appearance_choices(self) -> int:
        """A: the average appearance plus the most embeddings any class has (the width of the
        appearance table; a class with fewer has its extra choices masked)."""
        return 1 + max(self.appearance_embeddings, default=0)

    @property
    def pose_choices(self) -> int:
        """P: the most pose choices (canonical included) any class has (the width of the pose
        table; a class with fewer has its extra choices masked)."""
        return max(map(len, self.pose_probs), default=1)

    def frozen(self) -> "PsiConfig":
        """This config with every part fixed."""
        return replace(self, **{f"learn_{part}": False for part in PARTS})


@dataclass
class PsiNoise:
    """Everything drawn by :meth:`Psi.sample`: the noise, the discrete choices and the values
    they gave (detached). :meth:`Psi.replay` turns it back into the same scene; the recorded
    values let :meth:`Psi.log_prob` score the sample under a later psi."""

    count: Int[Tensor, "B"]
    """Objects in each image, 1..M; slots j >= count are empty."""
    class_ids: Int[Tensor, "B M"]
    azimuth_bin: Int[Tensor, "B M"]
    azimuth_gumbel: Float[Tensor, "B M K"]
    azimuth_offset: Float[Tensor, "B M"]
    """Position inside the bin, uniform in [0, 1)."""
    elevation_noise: Float[Tensor, "B M"]
    elevation_logit: Float[Tensor, "B M"]
    """Drawn pre-sigmoid elevation."""
    distance_noise: Float[Tensor, "B M"]
    log_distance: Float[Tensor, "B M"]
    exposure_noise: Float[Tensor, "B M"]
    exposure: Float[Tensor, "B M"]
    color_gain_noise: Float[Tensor, "B M 3"]
    log_color_gain: Float[Tensor, "B M 3"]
    appearance_ids: Int[Tensor, "B M"]
    """Appearance embedding of each slot's object, or -1 for the average."""
    pose_ids: Int[Tensor, "B M"]
    """Resting pose of each slot's object, -1 for the canonical one (always -1 without poses)."""
    offset: Float[Tensor, "B M 2"]
    background_ids: Int[Tensor, "B"]
    """Background image index, or -1 for the plain colour."""
    background_crop: Float[Tensor, "B 3"]
    background_color: Float[Tensor, "B 3"]
    temperature: float = 1.0
    """Gumbel-softmax temperature in force when this was drawn (replay uses it for gradients)."""

    @property
    def batch_size(self) -> int:
        return self.count.shape[0]

    @property
    def present(self) -> Bool[Tensor, "B M"]:
        slots = torch.arange(self.class_ids.shape[1], device=self.count.device)
        return slots < self.count[:, None]

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "temperature"]

    def index(self, rows: slice | Tensor) -> "PsiNoise":
        """The images ``rows`` (a slice or index tensor) of this batch."""
        return replace(self, **{name: getattr(self, name)[rows] for name in self._tensor_fields()})

    def to(self, device: torch.device | str) -> "PsiNoise":
        return replace(self, **{name: getattr(self, name).to(device) for name in self._tensor_fields()})


@dataclass
class PsiSample:
    """A batch drawn from psi: the scene (float fields differentiable w.r.t. psi) and its noise."""

    scene: SceneParams
    noise: PsiNoise


def _gumbel(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    uniform = torch.rand(shape, generator=generator, device=generator.device)
    return -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))


def _normal_log_density(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    return -log_scale - 0.5 * ((x - loc) / log_scale.exp()) ** 2 - 0.5 * math.log(2 * math.pi)


def _average_appearance_if_missing(psi: "Psi", state_dict: dict[str, Tensor], prefix: str, *hook_args) -> None:
    """Load-state-dict pre-hook: checkpoints written before psi had an appearance part lack its
    table. Their runs rendered every object with the average appearance, so a resumed run
    keeps doing that."""
    name = prefix + "appearance_logits"
    if name not in state_dict:
        only_average = torch.full_like(psi.appearance_logits, -math.inf)
        only_average[:, 0] = 0.0
        state_dict[name] = only_average


def _canonical_pose_if_missing(psi: "Psi", state_dict: dict[str, Tensor], prefix: str, *hook_args) -> None:
    """Load-state-dict pre-hook: checkpoints written before psi had a pose part lack its table;
    their objects were never turned over, so a resumed run keeps them in the canonical pose."""
    name = prefix + "pose_logits"
    if name not in state_dict:
        canonical = torch.full_like(psi.pose_logits, -math.inf)
        canonical[:, 0] = 0.0
        state_dict[name] = canonical


def _pose_table(config: PsiConfig) -> tuple[Tensor, Tensor]:
    """Initial pose logits (C x P: log of each class's normalised pose_probs; 0 past its
    poses, masked by the second tensor, so the logits Adam updates stay finite; a probability of
    0 stays impossible) and which choices each class has."""
    logits = torch.zeros(config.num_classes, config.pose_choices)
    available = torch.zeros(config.num_classes, config.pose_choices, dtype=torch.bool)
    available[:, 0] = True
    for class_id, row in enumerate(config.pose_probs):
        probs = torch.tensor(row, dtype=torch.float32)
        logits[class_id, : len(row)] = (probs / probs.sum()).log().clamp_min(-1e4)
        available[class_id, : len(row)] = True
    return logits, available


class Psi(nn.Module):
    """The scene-parameter distribution (see the module docstring for each part).

    Learnable parts are ``nn.Parameter`` s, fixed parts buffers, so ``psi.parameters()`` is
    exactly what the outer optimiser updates and ``state_dict()`` holds everything, including
    the temperature schedule's step.
    """

    azimuth_logits: Float[Tensor, "C K"]
    elevation_loc: Float[Tensor, "C"]
    elevation_log_scale: Float[Tensor, "C"]
    distance_loc: Float[Tensor, "C"]
    distance_log_scale: Float[Tensor, "C"]
    exposure_loc: Float[Tensor, "C"]
    exposure_log_scale: Float[Tensor, "C"]
    color_gain_loc: Float[Tensor, "C 3"]
    color_gain_log_scale: Float[Tensor, "C 3"]
    appearance_logits: Float[Tensor, "C A"]
    appearance_available: Bool[Tensor, "C A"]
    background_logits: Float[Tensor, "NB"]
    class_logits: Float[Tensor, "C"]
    count_logits: Float[Tensor, "M"]
    pose_logits: Float[Tensor, "C P"]
    pose_available: Bool[Tensor, "C P"]
    temperature_step: Int[Tensor, ""]

    def __init__(self, config: PsiConfig) -> None:
        super().__init__()
        self.config = config
        c = config.num_classes
        lo, hi = config.elevation_range_deg
        median_fraction = (torch.tensor(config.per_class("elevation_median_deg")) - lo) / (hi - lo)
        pose_logits, pose_available = _pose_table(config)
        initial = {
            "azimuth_logits": torch.zeros(c, config.azimuth_bins),
            "elevation_loc": torch.logit(median_fraction),
            "elevation_log_scale": torch.tensor(config.per_class("elevation_logit_std")).log(),
            "distance_loc": torch.tensor(config.per_class("distance_median")).log(),
            "distance_log_scale": torch.tensor(config.per_class("distance_log_std")).log(),
            "exposure_loc": torch.full((c,), config.exposure_mean),
            "exposure_log_scale": torch.full((c,), math.log(config.exposure_std)),
            "color_gain_loc": torch.zeros(c, 3),
            "color_gain_log_scale": torch.full((c, 3), math.log(config.color_gain_log_std)),
            "appearance_logits": torch.zeros(c, config.appearance_choices),
            "background_logits": torch.zeros(config.num_background_choices),
            "class_logits": torch.zeros(c),
            "count_logits": torch.zeros(config.max_objects),
            "pose_logits": pose_logits,
        }
        for part in PARTS:
            for name in _PART_TENSORS[part]:
                if getattr(config, f"learn_{part}"):
                    self.register_parameter(name, nn.Parameter(initial[name]))
                else:
                    self.register_buffer(name, initial[name])
        self.register_buffer("temperature_step", torch.zeros((), dtype=torch.long))
        # Which appearance choices each class has: fixed by the config, so not saved.
        embeddings = torch.tensor(config.appearance_embeddings or (0,) * c)
        available = torch.arange(config.appearance_choices) <= embeddings[:, None]
        self.register_buffer("appearance_available", available, persistent=False)
        self.register_buffer("pose_available", pose_available, persistent=False)
        self.register_load_state_dict_pre_hook(_average_appearance_if_missing)
        self.register_load_state_dict_pre_hook(_canonical_pose_if_missing)

    # ---------------------------------------------------------------- construction

    @classmethod
    def uniform(cls, config: PsiConfig) -> "Psi":
        """Uniform azimuth bins, classes, counts, backgrounds and appearances, the config's
        initial view and lighting, every part fixed (the 'fixed uniform psi' baseline)."""
        return cls(config.frozen())

    @classmethod
    def from_target(
        cls,
        config: PsiConfig,
        *,
        azimuth_bin_probs: Sequence[float] | Sequence[Sequence[float]] | None = None,
        elevation_median_deg: float | Sequence[float] | None = None,
        elevation_logit_std: float | Sequence[float] | None = None,
        distance_median: float | Sequence[float] | None = None,
        distance_log_std: float | Sequence[float] | None = None,
        exposure_mean: float | Sequence[float] | None = None,
        exposure_std: float | Sequence[float] | None = None,
        color_gain_median: Sequence[float] | Sequence[Sequence[float]] | None = None,
        color_gain_log_std: float | Sequence[float] | Sequence[Sequence[float]] | None = None,
        appearance_probs: Sequence[float] | Sequence[Sequence[float]] | None = None,
        background_probs: Sequence[float] | None = None,
        pose_probs: Sequence[Sequence[float]] | None = None,
        class_probs: Sequence[float] | None = None,
        count_probs: Sequence[float] | None = None,
    ) -> "Psi":
        """A fixed psi equal to a known distribution (the oracle baseline, or a target domain
        to render). Per-class arguments take one value for all classes or one per class
        (azimuth: K probabilities, or C rows of K; colour gains: one value, 3 channels, or C
        rows of 3; appearance: one row for all classes or C rows, row c with 1 +
        appearance_embeddings[c] probabilities, the average first). Probabilities are
        normalised and may be 0 (that choice is never drawn). Parts left out keep the config's
        initial values."""
        psi = cls.uniform(config)
        c = config.num_classes
        lo, hi = config.elevation_range_deg

        def per_class(name: str, value, trailing: tuple[int, ...] = ()) -> Tensor:
            t = torch.as_tensor(value, dtype=torch.float32)
            if tuple(t.shape) == (c, *trailing):
                return t.clone()
            if t.dim() <= len(trailing) and tuple(t.shape) == trailing[len(trailing) - t.dim() :]:
                return t.expand(c, *trailing).clone()
            raise OptimizerError(
                f"Psi.from_target: {name} must have shape {tuple(trailing)} (all classes) or {(c, *trailing)} (per class), "
                f"got {tuple(t.shape)}"
            )

        def logits(name: str, probs, size: int) -> Tensor:
            p = torch.as_tensor(probs, dtype=torch.float32)
            if p.shape[-1] != size or (p < 0).any() or not (p.sum(-1) > 0).all():
                raise OptimizerError(f"Psi.from_target: {name} needs {size} non-negative probabilities (not all 0), got {p.tolist()}")
            return (p / p.sum(-1, keepdim=True)).log()

        def positive(name: str, value: Tensor) -> Tensor:
            if not (value > 0).all():
                raise OptimizerError(f"Psi.from_target: {name} must be > 0, got {value.tolist()}")
            return value

        values: dict[str, Tensor] = {}
        if azimuth_bin_probs is not None:
            azimuth = logits("azimuth_bin_probs", azimuth_bin_probs, config.azimuth_bins)
            if azimuth.dim() == 2 and azimuth.shape[0] != c:
                raise OptimizerError(f"Psi.from_target: azimuth_bin_probs has {azimuth.shape[0]} rows for {c} classes")
            values["azimuth_logits"] = azimuth.expand(c, -1)
        if elevation_median_deg is not None:
            median = per_class("elevation_median_deg", elevation_median_deg)
            if not ((median > lo) & (median < hi)).all():
                raise OptimizerError(f"Psi.from_target: elevation_median_deg must lie inside {config.elevation_range_deg}")
            values["elevation_loc"] = torch.logit((median - lo) / (hi - lo))
        if elevation_logit_std is not None:
            values["elevation_log_scale"] = positive("elevation_logit_std", per_class("elevation_logit_std", elevation_logit_std)).log()
        if distance_median is not None:
            values["distance_loc"] = positive("distance_median", per_class("distance_median", distance_median)).log()
        if distance_log_std is not None:
            values["distance_log_scale"] = positive("distance_log_std", per_class("distance_log_std", distance_log_std)).log()
        if exposure_mean is not None:
            values["exposure_loc"] = per_class("exposure_mean", exposure_mean)
        if exposure_std is not None:
            values["exposure_log_scale"] = positive("exposure_std", per_class("exposure_std", exposure_std)).log()
        if color_gain_median is not None:
            values["color_gain_loc"] = positive("color_gain_median", per_class("color_gain_median", color_gain_median, (3,))).log()
        if color_gain_log_std is not None:
            values["color_gain_log_scale"] = positive("color_gain_log_std", per_class("color_gain_log_std", color_gain_log_std, (3,))).log()
        if appearance_probs is not None:
            one_row = all(isinstance(p, numbers.Real) for p in appearance_probs)
            rows = [appearance_probs] * c if one_row else list(appearance_probs)
            if len(rows) != c:
                raise OptimizerError(f"Psi.from_target: appearance_probs has {len(rows)} rows for {c} classes")
            table = torch.zeros(c, config.appearance_choices)
            for class_id, (row, available) in enumerate(zip(rows, psi.appearance_available)):
                choices = int(available.sum())
                table[class_id, :choices] = logits(f"appearance_probs[{class_id}]", row, choices)
            values["appearance_logits"] = table
        if pose_probs is not None:
            if len(pose_probs) != c:
                raise OptimizerError(f"Psi.from_target: pose_probs has {len(pose_probs)} rows for {c} classes")
            table = torch.zeros(c, config.pose_choices)
            for class_id, (row, available) in enumerate(zip(pose_probs, psi.pose_available)):
                table[class_id, : int(available.sum())] = logits(f"pose_probs[{class_id}]", row, int(available.sum()))
            values["pose_logits"] = table
        if background_probs is not None:
            values["background_logits"] = logits("background_probs", background_probs, config.num_background_choices)
        if class_probs is not None:
            values["class_logits"] = logits("class_probs", class_probs, c)
        if count_probs is not None:
            values["count_logits"] = logits("count_probs", count_probs, config.max_objects)
        with torch.no_grad():
            for name, value in values.items():
                getattr(psi, name).copy_(value)
        return psi

    # ---------------------------------------------------------------- schedule and getters

    @property
    def device(self) -> torch.device:
        return self.azimuth_logits.device

    @property
    def temperature(self) -> float:
        """Current Gumbel-softmax temperature: max(min, start * decay**step)."""
        cfg = self.config
        return max(cfg.temperature_min, cfg.temperature * cfg.temperature_decay ** int(self.temperature_step))

    def step_temperature(self) -> None:
        """Advance the temperature schedule by one step (call once per outer iteration)."""
        self.temperature_step += 1

    @property
    def learnable_parts(self) -> tuple[str, ...]:
        return tuple(part for part in PARTS if getattr(self.config, f"learn_{part}"))

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each learnable part (e.g. for per-part optimiser groups)."""
        return {part: [getattr(self, name) for name in _PART_TENSORS[part]] for part in self.learnable_parts}

    def azimuth_bin_edges(self) -> Float[Tensor, "K+1"]:
        """Bin edges in radians, 0 .. 2pi."""
        return torch.linspace(0, 2 * math.pi, self.config.azimuth_bins + 1, device=self.device)

    def azimuth_probs(self) -> Float[Tensor, "C K"]:
        return self.azimuth_logits.softmax(-1)

    def class_probs(self) -> Float[Tensor, "C"]:
        return self.class_logits.softmax(-1)

    def count_probs(self) -> Float[Tensor, "M"]:
        """Probability of 1..M objects per image."""
        return self.count_logits.softmax(-1)

    def appearance_log_probs(self) -> Float[Tensor, "C A"]:
        """Log probability of each class's appearance choices: the average, then each
        embedding; -inf past the class's embeddings. Masked here rather than stored, so the
        logits Adam updates stay finite."""
        return self.appearance_logits.masked_fill(~self.appearance_available, -math.inf).log_softmax(-1)

    def appearance_probs(self) -> Float[Tensor, "C A"]:
        """Probability of each class's average appearance, then of each embedding (0 past the
        class's embeddings)."""
        return self.appearance_log_probs().exp()

    def pose_log_probs(self) -> Float[Tensor, "C P"]:
        """Log probability of each class's canonical pose, then of its poses 0..n-1; -inf past
        them."""
        return self.pose_logits.masked_fill(~self.pose_available, -math.inf).log_softmax(-1)

    def background_probs(self) -> Float[Tensor, "NB"]:
        """Probability of each background image, then of the plain colour (if enabled)."""
        return self.background_logits.softmax(-1)

    def entropy(self) -> Float[Tensor, "C"]:
        """Entropy (nats) of each class's azimuth bin distribution: add ``-weight * entropy``
        to the outer loss to resist collapse onto one bin. At most log K."""
        return torch.special.entr(self.azimuth_probs()).sum(-1)

    def snapshot(self) -> dict:
        """JSON-friendly summary in degrees, metres and stops (lists are per class)."""
        with torch.no_grad():
            lo, hi = self.config.elevation_range_deg

            def elevation(z: Tensor) -> list[float]:
                return (lo + (hi - lo) * torch.sigmoid(z)).tolist()

            elevation_scale = self.elevation_log_scale.exp()
            distance_scale = self.distance_log_scale.exp()
            choices = self.appearance_available.sum(-1).tolist()
            return {
                "temperature": self.temperature,
                "learnable": list(self.learnable_parts),
                "azimuth": {
                    "bin_edges_deg": [360 * k / self.config.azimuth_bins for k in range(self.config.azimuth_bins + 1)],
                    "probs": self.azimuth_probs().tolist(),
                    "entropy": self.entropy().tolist(),
                },
                "elevation_deg": {
                    "median": elevation(self.elevation_loc),
                    "q10": elevation(self.elevation_loc - _Z90 * elevation_scale),
                    "q90": elevation(self.elevation_loc + _Z90 * elevation_scale),
                },
                "distance_m": {
                    "median": self.distance_loc.exp().tolist(),
                    "q10": (self.distance_loc - _Z90 * distance_scale).exp().tolist(),
                    "q90": (self.distance_loc + _Z90 * distance_scale).exp().tolist(),
                },
                "exposure_stops": {"mean": self.exposure_loc.tolist(), "std": self.exposure_log_scale.exp().tolist()},
                "color_gain": {"median": self.color_gain_loc.exp().tolist(), "log_std": self.color_gain_log_scale.exp().tolist()},
                "appearance_probs": [row[:n].tolist() for row, n in zip(self.appearance_probs(), choices)],
                "background_probs": self.background_probs().tolist(),
                "class_probs": self.class_probs().tolist(),
                "count_probs": self.count_probs().tolist(),
                "pose_probs": [row[:n].tolist() for row, n in zip(self.pose_log_probs().exp(), self.pose_available.sum(-1).tolist())],
            }

    # ---------------------------------------------------------------- sampling

    def _check_parts(self, parts: Collection[str] | None, what: str) -> frozenset[str]:
        if parts is None:
            return frozenset(PARTS)
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise OptimizerError(f"Psi.{what}: unknown parts {sorted(unknown)}; the parts are {list(PARTS)}")
        return frozenset(parts)

    def _check_noise(self, noise: PsiNoise, what: str) -> None:
        cfg = self.config
        shape = tuple(noise.azimuth_gumbel.shape[1:])
        top_class = int(noise.class_ids.max()) if noise.class_ids.numel() else 0
        if shape != (cfg.max_objects, cfg.azimuth_bins) or top_class >= cfg.num_classes:
            raise OptimizerError(
                f"Psi.{what}: noise drawn for another config (slots x bins {shape}, class ids up to "
                f"{top_class}); this psi has max_objects={cfg.max_objects}, "
                f"azimuth_bins={cfg.azimuth_bins}, num_classes={cfg.num_classes}"
            )
        appearance = noise.appearance_ids
        if appearance.numel() and (
            int(appearance.max()) >= cfg.appearance_choices - 1
            or not self.appearance_available[noise.class_ids, appearance + 1].all()
        ):
            raise OptimizerError(
                f"Psi.{what}: noise drawn for another config (appearance ids up to {int(appearance.max())} for "
                f"objects with appearance_embeddings={cfg.appearance_embeddings})"
            )
        poses = noise.pose_ids
        if poses.numel() and (
            int(poses.max()) >= cfg.pose_choices - 1 or not self.pose_available[noise.class_ids, poses + 1].all()
        ):
            raise OptimizerError(f"Psi.{what}: noise drawn for another config (pose ids up to {int(poses.max())} for "
                                 f"classes with {[int(n) - 1 for n in self.pose_available.sum(-1)]} resting poses)")

    def _tensor(self, name: str, part: str, with_grad: frozenset[str]) -> Tensor:
        value = getattr(self, name)
        return value if part in with_grad else value.detach()

    def _gaussian(self, part: str, class_ids: Tensor, noise: Tensor, with_grad: frozenset[str]) -> Tensor:
        """``loc + scale * noise`` of each slot's class: shared by sample and replay so both
        compute bit-identical values."""
        loc, log_scale = (self._tensor(name, part, with_grad)[class_ids] for name in _PART_TENSORS[part])
        return loc + log_scale.exp() * noise

    def sample(self, n: int, generator: torch.Generator | int, pose_group: int = 1) -> PsiSample:
        """Draw ``n`` images. ``generator`` (or a seed) is the only source of randomness; the
        noise is drawn on its device and moved to psi's.

        ``pose_group`` > 1 draws the images in consecutive groups of that many which share
        everything but the azimuth (bin and in-bin offset): same count, classes, elevation,
        distance, lighting (appearance included), placement and background. Each image is
        still an exact draw from psi (only the joint distribution changes), and comparing an
        image with the others of its group isolates the effect of its azimuth (see
        :func:`optimizer.estimators.leave_one_out_baseline`)."""
        if n < 1:
            raise OptimizerError(f"Psi.sample: n must be >= 1, got {n}")
        if pose_group < 1:
            raise OptimizerError(f"Psi.sample: pose_group must be >= 1, got {pose_group}")
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        cfg = self.config
        m, k = cfg.max_objects, cfg.azimuth_bins

        def uniform(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device=generator.device).to(self.device)

        def normal(*shape: int) -> Tensor:
            return torch.randn(shape, generator=generator, device=generator.device).to(self.device)

        def categorical(logits: Tensor, *shape: int) -> Tensor:
            gumbel = _gumbel((*shape, logits.shape[-1]), generator).to(self.device)
            return (logits.detach() + gumbel).argmax(-1)

        # Row i takes the shared draws of its group's first image (the identity for groups of 1).
        leader = torch.div(torch.arange(n, device=self.device), pose_group, rounding_mode="floor") * pose_group

        def shared(draw: Tensor) -> Tensor:
            return draw[leader]

        count = shared(categorical(self.count_logits, n) + 1)
        class_ids = shared(categorical(self.class_logits, n, m))
        azimuth_gumbel = _gumbel((n, m, k), generator).to(self.device)
        azimuth_bin = (self.azimuth_logits.detach()[class_ids] + azimuth_gumbel).argmax(-1)
        azimuth_offset = uniform(n, m)
        elevation_noise, distance_noise, exposure_noise = shared(normal(n, m)), shared(normal(n, m)), shared(normal(n, m))
        color_gain_noise = shared(normal(n, m, 3))

        # Side-by-side placement: slot j of an image with c objects sits at x = spacing *
        # (j - (c - 1) / 2), then jitters; with several objects the x jitter stays within
        # spacing / 4, so neighbours keep their order and centres stay spacing / 2 apart.
        slots = torch.arange(m, device=self.device, dtype=torch.float32)
        centre_x = torch.where(slots < count[:, None], cfg.object_spacing * (slots - (count[:, None] - 1) / 2), 0.0)
        jitter_x = torch.where(count == 1, cfg.offset_range[0], min(cfg.offset_range[0], cfg.object_spacing / 4))
        offset = shared(torch.stack(
            [
                cfg.offset_centre[0] + centre_x + jitter_x[:, None] * (2 * uniform(n, m) - 1),
                cfg.offset_centre[1] + cfg.offset_range[1] * (2 * uniform(n, m) - 1),
            ],
            dim=-1,
        ))

        background_choice = shared(categorical(self.background_logits, n))
        background_ids = torch.where(background_choice == cfg.num_backgrounds, -1, background_choice)
        side_lo, side_hi = cfg.background_crop_side
        side = shared(side_lo + (side_hi - side_lo) * uniform(n))
        centre = shared(side[:, None] / 2 + (1 - side[:, None]) * uniform(n, 2))
        color_lo, color_hi = cfg.background_color_range
        background_color = shared(color_lo + (color_hi - color_lo) * uniform(n, 3))

        # Drawn after every other part, so that a seed gives the scenes it gave before psi had an
        # appearance; without embeddings nothing is drawn (the generator is left as it was).
        if cfg.appearance_choices > 1:
            appearance_ids = shared(categorical(self.appearance_log_probs()[class_ids], n, m) - 1)
        else:
            appearance_ids = torch.full((n, m), -1, dtype=torch.long, device=self.device)
        # Last again, for the same reason: without pose tables the generator is left as it was.
        if cfg.pose_probs:
            pose_ids = shared(categorical(self.pose_log_probs()[class_ids], n, m) - 1)
        else:
            pose_ids = torch.full((n, m), -1, dtype=torch.long, device=self.device)

        none: frozenset[str] = frozenset()
        noise = PsiNoise(
            count=count,
            class_ids=class_ids,
            azimuth_bin=azimuth_bin,
            azimuth_gumbel=azimuth_gumbel,
            azimuth_offset=azimuth_offset,
            elevation_noise=elevation_noise,
            elevation_logit=self._gaussian("elevation", class_ids, elevation_noise, none),
            distance_noise=distance_noise,
            log_distance=self._gaussian("distance", class_ids, distance_noise, none),
            exposure_noise=exposure_noise,
            exposure=self._gaussian("exposure", class_ids, exposure_noise, none),
            color_gain_noise=color_gain_noise,
            log_color_gain=self._gaussian("color_gain", class_ids, color_gain_noise, none),
            appearance_ids=appearance_ids,
            pose_ids=pose_ids,
            offset=offset,
            background_ids=background_ids,
            background_crop=torch.cat([centre, side[:, None]], dim=-1),
            background_color=background_color,
            temperature=self.temperature,
        )
        return PsiSample(scene=self.replay(noise), noise=noise)

    def replay(self, noise: PsiNoise, pathwise_parts: Collection[str] | None = None) -> SceneParams:
        """The scene that ``noise`` was drawn as, recomputed with gradients.

        Under the psi that drew it the values are bit-identical to the sample's. The discrete
        choices (bins, classes, counts, backgrounds, appearances, poses) are kept as recorded; the
        continuous values are recomputed from the recorded noise, so after psi changes they
        move with it (the reparameterisation). Only parts in ``pathwise_parts`` (default: all)
        carry gradients; fixed parts never do.
        """
        with_grad = self._check_parts(pathwise_parts, "replay")
        self._check_noise(noise, "replay")
        cfg = self.config
        class_ids = noise.class_ids
        width = 2 * math.pi / cfg.azimuth_bins

        start = noise.azimuth_bin * width
        # Clamp below the bin's upper edge: start + u * width can round up onto it in float32.
        hard = torch.minimum(start + noise.azimuth_offset * width, torch.nextafter(start + width, start))
        if "azimuth" in with_grad and self.azimuth_logits.requires_grad:
            soft = ((self.azimuth_logits[class_ids] + noise.azimuth_gumbel) / noise.temperature).softmax(-1)
            bins = torch.arange(cfg.azimuth_bins, device=self.device)
            relaxed = (soft * (bins + noise.azimuth_offset[..., None]) * width).sum(-1)
            # Straight-through: the value is exactly the hard one (x - x == 0 in floating
            # point), the gradient that of the relaxed Gumbel-softmax mixture.
            azimuth = hard + (relaxed - relaxed.detach())
        else:
            azimuth = hard

        lo, hi = (math.radians(a) for a in cfg.elevation_range_deg)
        elevation = lo + (hi - lo) * torch.sigmoid(self._gaussian("elevation", class_ids, noise.elevation_noise, with_grad))
        distance = self._gaussian("distance", class_ids, noise.distance_noise, with_grad).exp()
        exposure = self._gaussian("exposure", class_ids, noise.exposure_noise, with_grad)
        color_gain = self._gaussian("color_gain", class_ids, noise.color_gain_noise, with_grad).exp()
        return SceneParams(
            object_ids=class_ids,
            present=noise.present,
            azimuth=azimuth,
            elevation=elevation,
            roll=torch.zeros_like(hard),
            distance=distance,
            offset=noise.offset,
            exposure=exposure,
            color_gain=color_gain,
            background_ids=noise.background_ids,
            background_crop=noise.background_crop,
            background_color=noise.background_color,
            # None when no object has embeddings, so renderers that ignore appearance see no change.
            appearance_ids=noise.appearance_ids if cfg.appearance_choices > 1 else None,
            pose_ids=noise.pose_ids if cfg.pose_probs else None,
        )

    def log_prob(self, noise: PsiNoise, parts: Collection[str] | None = None) -> Float[Tensor, "B"]:
        """Log density of each recorded image under the current psi, summed over ``parts``
        (default: all) and over the present objects; differentiable w.r.t. the learnable
        parameters (the score function). Discrete parts give log probabilities; continuous
        ones log densities of the recorded values (radians, metres, stops), including the
        in-bin uniform and the squashing Jacobians, which do not depend on psi."""
        parts = self._check_parts(parts, "log_prob")
        self._check_noise(noise, "log_prob")
        cfg = self.config
        class_ids, present = noise.class_ids, noise.present
        per_slot = torch.zeros(class_ids.shape, device=self.device)
        if "azimuth" in parts:
            log_p = self.azimuth_logits.log_softmax(-1)[class_ids].gather(-1, noise.azimuth_bin[..., None])[..., 0]
            per_slot = per_slot + log_p - math.log(2 * math.pi / cfg.azimuth_bins)
        if "elevation" in parts:
            z = noise.elevation_logit
            lo, hi = (math.radians(a) for a in cfg.elevation_range_deg)
            jacobian = math.log(hi - lo) + F.logsigmoid(z) + F.logsigmoid(-z)
            per_slot = per_slot + _normal_log_density(z, self.elevation_loc[class_ids], self.elevation_log_scale[class_ids]) - jacobian
        if "distance" in parts:
            log_d = noise.log_distance
            per_slot = per_slot + _normal_log_density(log_d, self.distance_loc[class_ids], self.distance_log_scale[class_ids]) - log_d
        if "exposure" in parts:
            per_slot = per_slot + _normal_log_density(noise.exposure, self.exposure_loc[class_ids], self.exposure_log_scale[class_ids])
        if "color_gain" in parts:
            log_g = noise.log_color_gain
            density = _normal_log_density(log_g, self.color_gain_loc[class_ids], self.color_gain_log_scale[class_ids]) - log_g
            per_slot = per_slot + density.sum(-1)
        if "appearance" in parts:
            choice = (noise.appearance_ids + 1)[..., None]
            per_slot = per_slot + self.appearance_log_probs()[class_ids].gather(-1, choice)[..., 0]
        if "pose" in parts:
            per_slot = per_slot + self.pose_log_probs()[class_ids].gather(-1, (noise.pose_ids + 1)[..., None])[..., 0]
        if "class_mix" in parts:
            per_slot = per_slot + self.class_logits.log_softmax(-1)[class_ids]
        total = torch.where(present, per_slot, 0.0).sum(-1)
        if "count" in parts:
            total = total + self.count_logits.log_softmax(-1)[noise.count - 1]
        if "background" in parts:
            choice = torch.where(noise.background_ids < 0, cfg.num_backgrounds, noise.background_ids)
            total = total + self.background_logits.log_softmax(-1)[choice]
        return total
