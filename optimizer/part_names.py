"""psi's parts by name, and what kind each is: torch-free, for configs and the service.

``REGISTRY`` is where a part is registered: one line per part. Its implementation is the
module ``optimizer.psi_parts.<name>`` (found by name, see :mod:`optimizer.psi_parts`), and
:class:`optimizer.psi_config.PsiConfig` has its ``learn_<name>`` flag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartEntry:
    """One part of psi, as configs and the service see it."""

    name: str
    """Its name in configs (``learn_<name>``, the learnable parts) and its module in optimizer.psi_parts."""
    snapshot_key: str
    """Its entry in ``Psi.snapshot()`` (psi.json, progress events, reports)."""
    reparameterised: bool = False
    """Its sampled values carry a pathwise gradient (``Psi.replay``)."""
    discrete: bool = False
    """It draws a discrete choice, which a score-function estimator handles without relaxation bias."""
    geometric: bool = False
    """It moves the object in the image, and with it its box."""
    per_class: bool = False
    """It has one distribution per class over the same values for every class (its tensors'
    first dimension is the class), so classes can share one."""


REGISTRY: tuple[PartEntry, ...] = (
    PartEntry("azimuth", "azimuth", reparameterised=True, discrete=True, geometric=True, per_class=True),
    PartEntry("elevation", "elevation_deg", reparameterised=True, geometric=True, per_class=True),
    PartEntry("distance", "distance_m", reparameterised=True, geometric=True, per_class=True),
    PartEntry("exposure", "exposure_stops", reparameterised=True, per_class=True),
    PartEntry("color_gain", "color_gain", reparameterised=True, per_class=True),
    PartEntry("appearance", "appearance_probs", discrete=True),
    PartEntry("background", "background_probs", discrete=True),
    PartEntry("class_mix", "class_probs", discrete=True),
    PartEntry("count", "count_probs", discrete=True),
    PartEntry("pose", "pose_probs", discrete=True),
)
"""Every part of psi, in the order used by configs, snapshots and parameter groups (and so by
optimiser checkpoints: a new part goes last)."""

PARTS: tuple[str, ...] = tuple(entry.name for entry in REGISTRY)
"""Every part's name, in registry order."""

SNAPSHOT_KEYS: dict[str, str] = {entry.name: entry.snapshot_key for entry in REGISTRY}
"""Each part's entry in ``Psi.snapshot()``."""

REPARAMETERISED_PARTS: frozenset[str] = frozenset(entry.name for entry in REGISTRY if entry.reparameterised)
"""Parts whose sampled values carry a pathwise gradient (azimuth through the straight-through
Gumbel-softmax, the others exactly)."""

GEOMETRIC_PARTS: frozenset[str] = frozenset(entry.name for entry in REGISTRY if entry.geometric)
"""Parts that move the object in the image, and with it its box. The boxes reach the detection
loss as constants (Ultralytics assigns targets without gradients, and detector.targets detaches
them), so a pathwise derivative through the pixels alone sees the object move inside a box
that stays put: biased. Measured: on the zoom shift it moved the median distance away from the
target (0.6 -> 0.84 m, target 0.33 m) where the score function moved it toward (0.6 -> 0.26 m)."""

DISCRETE_PARTS: frozenset[str] = frozenset(entry.name for entry in REGISTRY if entry.discrete)
"""Parts with a discrete choice (for azimuth: the bin), i.e. those a score-function estimator
handles without relaxation bias."""

PER_CLASS_PARTS: frozenset[str] = frozenset(entry.name for entry in REGISTRY if entry.per_class)
"""Parts with one distribution per class over the same values for every class, so classes can
share one. ``appearance`` is per class too, but its choices are each object's own training
images, which mean nothing for another object."""
