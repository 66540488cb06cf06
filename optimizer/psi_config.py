"""The shape, initial values and learnability of psi (:class:`PsiConfig`): torch-free, so the
service can validate a job's psi settings without torch."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from optimizer.errors import OptimizerError
from optimizer.part_names import PARTS

_PER_CLASS_FIELDS = ("elevation_median_deg", "elevation_logit_std", "distance_median", "distance_log_std")
"""PsiConfig fields that take one value for all classes or one per class."""


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
