"""The starting psi from the user's validation photos: distance and image position priors.

A detector is judged on the user's photos, so the scene parameters start where the photos are:

- **distance** (per class): an object of known size seen through the scene's camera (field of
  view, square image as the renderer and the letterboxed photos are) has a box whose size fixes
  its depth. Each object's occupied volume (its radiance field's density on a grid over its
  ``aabb``) is projected at many views (azimuths all round, elevations over psi's range) to get
  the box size it has at each view and depth; the photos' box sizes then give the log distance
  (mean of log box size against mean of log projected size) and its spread (the boxes' log-size
  variance less the part the views explain, floored at MIN_DISTANCE_LOG_STD). Boxes touching
  the image border are truncated, so they are left out while a class has others.
- **offset** (all classes, as in psi): the box centres' range in the letterboxed image, in
  units of the image half-size, y up, becomes ``offset_centre`` +- ``offset_range``.
- **layout** (all classes): with several labelled objects in a photo, ``max_objects`` becomes
  the most boxes in one photo (at most MAX_OBJECTS) and ``object_spacing`` NEIGHBOUR_SPACING
  times the median box width, so that neighbours of the photos' size overlap a little, as in
  clutter (occlusion); the row of objects reaches the image border now and then (truncation;
  the labels keep the visible box). One object per photo leaves both as configured. Jobs do
  this only with ``OptimizeConfig.scene.several_objects`` (off by default: on the YCB-Video photos
  one object per render scored better, docs/findings.md).
- **elevation** is left as configured: a box's aspect depends on the azimuth as much as on the
  elevation (and not at all for objects that look alike from every side). Measured on the
  tests' 10 x 6 x 4 cm box, 32 renders per elevation: the likelihood of the boxes' aspects
  (averaged over azimuths) peaked at 5 degrees for a true 10, at 15 for a true 30 and was flat
  for a true 60, so it would be a guess.

Distances are in the scene camera's terms (the depth at which the scene's field of view shows
the object at the photos' box size), not the physical distance of the photos' camera: what
the renderer needs to match the photos.

Fallbacks (each written into :meth:`PsiPriors.summary`): a class with no box in the photos gets
the mean log distance of the classes that have boxes (objects photographed together sit at
similar depths) and the widest of their spreads; no box at all leaves psi as configured.
Explicit PsiConfig overrides (``OptimizeConfig.psi.initial``) win over every prior.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor

from detector.datasets import LabelledSet
from optimizer.baselines import psi_config
from optimizer.config import OptimizeConfig
from optimizer.psi import PsiConfig
from renderer.camera import view_rotation
from renderer.resting import occupied_points
from renderer.scene_renderer import SceneRenderer
from renderer.scene_types import SceneParams

MAX_OBJECTS = 4
"""Most object slots the layout prior gives psi (more photos' boxes than this in one photo are
still fine; the scenes just have fewer)."""
NEIGHBOUR_SPACING = 0.85
"""Spacing of neighbouring objects as a fraction of the photos' median box width: neighbours of
that width overlap by about 15% of it."""
MIN_DISTANCE_LOG_STD = 0.1
"""Floor of a derived log-distance spread: a few photos at one depth would otherwise give a
distance psi could barely move away from."""
BORDER_PX = 1.0
"""A box this close to the image border is taken as truncated by it."""
MIN_OFFSET_RANGE = 0.05
"""Floor of a derived offset half-range (one photo, or objects always at one spot)."""
MAX_OFFSET = 0.95
"""Largest |offset| a derived range reaches, in image half-sizes (psi needs object centres
inside the image)."""
CALIBRATION_AZIMUTHS = 4
CALIBRATION_SIZE = 64
"""Views (azimuths x the elevations) and image size of the renders that scale the projected
occupied cells to the rendered silhouette."""
VIEW_AZIMUTHS = 16
VIEW_ELEVATIONS = 5
"""Views at which objects are projected: azimuths evenly round, elevations at quantiles of the
class's initial elevation distribution (the views psi draws)."""


@dataclass
class ClassPrior:
    """What the photos say about one class."""

    name: str
    boxes: int
    """Boxes of this class in the photos."""
    used: int
    """Boxes used for the distance (those not truncated by the border, unless all are)."""
    distance_median: float | None
    """Metres; None where the class keeps the config's value (see note)."""
    distance_log_std: float | None
    note: str = ""


@dataclass
class PsiPriors:
    """Priors derived from a labelled set (:func:`derive_priors`)."""

    classes: list[ClassPrior]
    offset_centre: tuple[float, float] | None = None
    offset_range: tuple[float, float] | None = None
    max_objects: int | None = None
    """Object slots per image (None: as configured; see the module docstring's layout)."""
    object_spacing: float | None = None
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> dict:
        """PsiConfig field values the priors set (empty where the photos say nothing)."""
        values: dict = {}
        if self.classes and all(c.distance_median is not None for c in self.classes):
            values["distance_median"] = tuple(c.distance_median for c in self.classes)
            values["distance_log_std"] = tuple(c.distance_log_std for c in self.classes)
        if self.offset_centre is not None:
            values["offset_centre"], values["offset_range"] = self.offset_centre, self.offset_range
        if self.max_objects is not None:
            values["max_objects"], values["object_spacing"] = self.max_objects, self.object_spacing
        return values

    def summary(self, applied: dict | None = None, overridden: Collection[str] = ()) -> dict:
        """JSON for the report: per class what was derived and from how many boxes, the offsets,
        the notes, which PsiConfig fields took the priors (and their values) and which the
        user's overrides kept."""
        applied = applied or {}
        return {
            "values": {name: list(value) if isinstance(value, tuple) else value for name, value in sorted(applied.items())},
            "classes": [vars(c).copy() for c in self.classes],
            "offset_centre": self.offset_centre,
            "offset_range": self.offset_range,
            "max_objects": self.max_objects,
            "object_spacing": self.object_spacing,
            "elevation": "as configured (a box's aspect does not determine the elevation)",
            "applied": sorted(applied),
            "overridden_by_user": sorted(overridden),
            "notes": list(self.notes),
        }


GROUPS = (("distance_median", "distance_log_std"), ("offset_centre", "offset_range"), ("max_objects", "object_spacing"))
"""PsiConfig fields the priors set together: a user who sets one of a group keeps the
configured value of the others too (a prior's spread belongs with its own centre)."""


def apply_priors(config: PsiConfig, priors: PsiPriors, user_fields: Collection[str]) -> tuple[PsiConfig, dict]:
    """``config`` with the priors' values, except for the groups (GROUPS) of which the user set
    a field (``user_fields``); and the report's summary of what was applied."""
    values = priors.overrides()
    user = {name for group in GROUPS if set(group) & set(user_fields) for name in group}
    kept = {name: value for name, value in values.items() if name not in user}
    return replace(config, **kept), priors.summary(applied=kept, overridden=set(values) - set(kept))


def starting_psi_config(
    config: OptimizeConfig, renderer: SceneRenderer, class_names: Sequence[str], val_set: LabelledSet
) -> tuple[PsiConfig, dict | None]:
    """A job's starting PsiConfig (optimizer.baselines.psi_config) with the priors from
    ``val_set`` (class ids in the scene's order) when ``config.psi.priors``; and the report's
    summary of the priors (None when off)."""
    base = psi_config(config, renderer.fields, len(renderer.backgrounds), renderer.poses)
    if not config.psi.priors:
        return base, None
    priors = derive_priors(val_set, class_names, renderer, base, config.psi.initial,
                           layout=config.scene.several_objects)
    return apply_priors(base, priors, config.psi.initial)


def derive_priors(
    val_set: LabelledSet, class_names: Sequence[str], renderer: SceneRenderer, config: PsiConfig,
    user_fields: Collection[str] = (), layout: bool = True,
) -> PsiPriors:
    """Priors from ``val_set`` (class ids in the scene's order, ``class_names``) for the objects
    ``renderer`` renders (its fields, in that order, and its camera). ``config`` (the job's
    PsiConfig before priors) gives the elevation range the views cover and the placement the
    offsets must fit; where the user set the layout (``user_fields`` holds max_objects or
    object_spacing) it is kept and the offsets fit it. ``layout``: derive the number of objects
    per image and their spacing from the photos (OptimizeConfig.scene.several_objects)."""
    sizes: list[list[tuple[float, bool]]] = [[] for _ in class_names]
    centres: list[tuple[float, float]] = []
    widths: list[float] = []
    most = 0
    empty = 0
    for image in val_set.images:
        most = max(most, sum(bool((box[2:] > box[:2]).all()) for box in image.boxes))
        side = max(image.width, image.height)
        # The letterboxed square: longer side = the image, the rest padded evenly.
        shift = torch.tensor([side - image.width, side - image.height] * 2) / 2
        limits = torch.tensor([BORDER_PX, BORDER_PX, image.width - BORDER_PX, image.height - BORDER_PX])
        for pixels, class_id in zip(image.boxes, image.classes.tolist()):
            truncated = bool((pixels[:2] <= limits[:2]).any() or (pixels[2:] >= limits[2:]).any())
            x0, y0, x1, y1 = ((pixels + shift) / (side / 2) - 1).tolist()
            if x1 <= x0 or y1 <= y0:
                empty += 1
                continue
            sizes[class_id].append((math.log((x1 - x0) * (y1 - y0)) / 2, truncated))
            centres.append(((x0 + x1) / 2, -(y0 + y1) / 2))
            if not truncated:
                widths.append(x1 - x0)
    priors = PsiPriors(classes=[])
    if layout and most > 1 and widths and not {"max_objects", "object_spacing"} & set(user_fields):
        slots = min(most, MAX_OBJECTS)
        # The row of centres (+ a quarter spacing of jitter) must stay inside MAX_OFFSET.
        widest_row = MAX_OFFSET / ((slots - 1) / 2 + 1 / 4)
        spacing = min(NEIGHBOUR_SPACING * statistics.median(widths), widest_row)
        priors.max_objects, priors.object_spacing = slots, round(spacing, 4)
        config = replace(config, max_objects=slots, object_spacing=priors.object_spacing, offset_centre=(0.0, 0.0))
    if empty:
        priors.notes.append(f"{val_set.source}: {empty} boxes without area left out")
    if not centres:
        priors.notes.append(f"{val_set.source}: no labelled box, psi keeps its configured distance and offsets")
    else:
        priors.offset_centre, priors.offset_range = _offsets(torch.tensor(centres), config, priors.notes)
    for class_id, (name, boxes) in enumerate(zip(class_names, sizes)):
        priors.classes.append(_class_prior(name, boxes, renderer, class_id, _view_elevations(config, class_id)))
    _fill_missing(priors)
    return priors


def _offsets(centres: Float[Tensor, "N 2"], config: PsiConfig, notes: list[str]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre and half-range of the box centres, kept inside what psi can place. The observed
    extremes of n uniform draws fall short of the true ones by a 1/(n+1) of the range on
    average, so each side is widened by (max - min) / (n - 1) (unbiased for a uniform)."""
    lo, hi = centres.amin(0), centres.amax(0)
    widen = (hi - lo) / (len(centres) - 1) if len(centres) > 1 else torch.zeros(2)
    lo, hi = (lo - widen).clamp(-MAX_OFFSET, MAX_OFFSET), (hi + widen).clamp(-MAX_OFFSET, MAX_OFFSET)
    centre, half = ((lo + hi) / 2).tolist(), ((hi - lo) / 2).clamp_min(MIN_OFFSET_RANGE).tolist()
    if config.max_objects > 1:
        # Several objects sit in a row around the centre: the row must stay inside the image.
        row = config.object_spacing * (config.max_objects - 1) / 2 + min(half[0], config.object_spacing / 4)
        room = max(0.0, MAX_OFFSET - row)
        if abs(centre[0]) > room:
            notes.append(f"offset_centre x {centre[0]:.3f} moved to {math.copysign(room, centre[0]):.3f}: a row of "
                         f"{config.max_objects} objects spaced {config.object_spacing} must stay inside the image")
            centre[0] = math.copysign(room, centre[0])
    return (round(centre[0], 4), round(centre[1], 4)), (round(half[0], 4), round(half[1], 4))


def _view_elevations(config: PsiConfig, class_id: int) -> Tensor:
    """Radians: the quantiles (k + 1/2) / VIEW_ELEVATIONS of the class's initial elevation
    distribution in ``config``, i.e. the views psi itself will draw."""
    lo, hi = config.elevation_range_deg
    median = (config.per_class("elevation_median_deg")[class_id] - lo) / (hi - lo)
    quantiles = (torch.arange(VIEW_ELEVATIONS, dtype=torch.float64) + 0.5) / VIEW_ELEVATIONS
    logit = math.log(median / (1 - median)) + config.per_class("elevation_logit_std")[class_id] * _normal_quantile(quantiles)
    return torch.deg2rad(lo + (hi - lo) * torch.sigmoid(logit)).float()


def _normal_quantile(p: Tensor) -> Tensor:
    return math.sqrt(2) * torch.erfinv(2 * p - 1)


def _class_prior(name: str, boxes: list[tuple[float, bool]], renderer: SceneRenderer, class_id: int, elevations: Tensor) -> ClassPrior:
    if not boxes:
        return ClassPrior(name, 0, 0, None, None, "no box of this class in the photos")
    whole = [log_size for log_size, truncated in boxes if not truncated]
    note = "" if whole else "every box touches the image border (truncated): used anyway, the distance is an upper bound"
    log_sizes = torch.tensor(whole or [log_size for log_size, _ in boxes], dtype=torch.float64)
    fov_deg = renderer.config.fov_deg
    points = occupied_points(renderer.fields[class_id])
    radius = float(points.norm(dim=-1).max())
    scale = silhouette_log_scale(renderer, class_id, points, radius, elevations)
    # size ~ 1 / distance; projecting again at the estimate corrects for perspective (it settles in two).
    distance = 1.0
    for _ in range(3):
        view_sizes = projected_log_sizes(points, fov_deg, distance, elevations).double() + scale
        log_distance = float((view_sizes + math.log(distance)).mean() - log_sizes.mean())
        distance = max(math.exp(log_distance), 2 * radius)
    variance = float(log_sizes.var()) if len(log_sizes) > 1 else 0.0
    spread = math.sqrt(max(variance - float(view_sizes.var()), MIN_DISTANCE_LOG_STD**2))
    if distance == 2 * radius:
        note = (note + "; " if note else "") + "boxes larger than the object can look: distance clamped to twice its radius"
    return ClassPrior(name, len(boxes), len(log_sizes), round(distance, 4), round(spread, 4), note)


def _fill_missing(priors: PsiPriors) -> None:
    known = [c for c in priors.classes if c.distance_median is not None]
    if not known:
        return
    log_mean = sum(math.log(c.distance_median) for c in known) / len(known)
    widest = max(c.distance_log_std for c in known)
    for c in priors.classes:
        if c.distance_median is None:
            c.distance_median, c.distance_log_std = round(math.exp(log_mean), 4), widest
            c.note += "; given the mean distance of the classes with boxes (objects photographed together sit at similar depths)"


@torch.no_grad()
def silhouette_log_scale(
    renderer: SceneRenderer, class_id: int, points: Float[Tensor, "P 3"], radius: float, elevations: Tensor
) -> float:
    """Mean log ratio of the rendered box size to the size of the projected ``points`` over a
    few views (CALIBRATION_AZIMUTHS x ``elevations``): a surface that is soft or not quite opaque
    makes the rendered silhouette (mask > 0.5 along the whole ray) larger than its opaque cells,
    and the photos' boxes are compared with rendered ones."""
    fov_deg = renderer.config.fov_deg
    # The bounding sphere spans 60% of the image: never cut by the border, many pixels across.
    distance = radius / (0.6 * math.tan(math.radians(fov_deg) / 2))
    azimuth = torch.arange(CALIBRATION_AZIMUTHS) * (2 * math.pi / CALIBRATION_AZIMUTHS)
    azimuth, elevation = (grid.reshape(-1, 1) for grid in torch.meshgrid(azimuth, elevations.float(), indexing="ij"))
    views = azimuth.shape[0]
    device = renderer.fields[class_id].aabb.device
    scene = SceneParams(
        object_ids=torch.full((views, 1), class_id), present=torch.ones(views, 1, dtype=torch.bool),
        azimuth=azimuth, elevation=elevation, roll=torch.zeros(views, 1), distance=torch.full((views, 1), distance),
        offset=torch.zeros(views, 1, 2), exposure=torch.zeros(views, 1), color_gain=torch.ones(views, 1, 3),
        background_ids=torch.full((views,), -1), background_crop=torch.tensor([[0.5, 0.5, 1.0]]).expand(views, 3),
        background_color=torch.zeros(views, 3),
    ).to(device)
    boxes = renderer.render(scene, CALIBRATION_SIZE).boxes[:, 0].cpu() / (CALIBRATION_SIZE / 2)
    seen = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not seen.any():
        return 0.0  # nothing rendered opaque: the opaque cells (or the aabb) are all there is
    rendered = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-12).log() / 2
    projected = _project(points, fov_deg, distance, azimuth[:, 0], elevation[:, 0])
    return float((rendered - projected)[seen].mean())


def projected_log_sizes(points: Float[Tensor, "P 3"], fov_deg: float, distance: float, elevations: Tensor) -> Float[Tensor, "V"]:
    """log sqrt(width * height) of the box of ``points`` projected at each view (VIEW_AZIMUTHS
    azimuths x ``elevations``, radians) with the object's centre at ``distance`` on the optical
    axis, in units of the image half-size (as the photos' boxes are measured)."""
    azimuth = torch.arange(VIEW_AZIMUTHS) * (2 * math.pi / VIEW_AZIMUTHS)
    azimuth, elevation = torch.meshgrid(azimuth, elevations.float(), indexing="ij")
    return _project(points, fov_deg, distance, azimuth.reshape(-1), elevation.reshape(-1))


def _project(points: Float[Tensor, "P 3"], fov_deg: float, distance: float, azimuth: Tensor, elevation: Tensor) -> Float[Tensor, "V"]:
    rotation = view_rotation(azimuth, elevation, torch.zeros_like(azimuth))
    camera = torch.einsum("vij,pj->vpi", rotation, points)
    depth = distance - camera[..., 2]  # the camera looks down -z; the centre sits at z = -distance
    image = camera[..., :2] / depth[..., None] / math.tan(math.radians(fov_deg) / 2)
    extent = image.amax(1) - image.amin(1)
    return extent.clamp_min(1e-6).log().sum(-1) / 2
