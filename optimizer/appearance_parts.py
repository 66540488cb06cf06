"""The appearance objective for every part of psi (``alignment_objective="appearance"``): move
psi so that its images' objects look like the validation photos' objects, measured by the
squared maximum mean discrepancy (MMD) between the two sets of features below.

:mod:`optimizer.appearance` does this for the azimuth bins alone, exactly, by rendering every
scene at every bin. Here every other learnable part gets the score-function gradient of the
same kind of objective: for a kernel ``k`` and psi's images ``x ~ p_psi``, validation ones
``y ~ q``,

    MMD^2(psi) = E_{x, x'} k(x, x') - 2 E_{x, y} k(x, y) + E_{y, y'} k(y, y'),
    d MMD^2 / d psi = 2 E_x [ w(x) d/dpsi log p_psi(x) ],   w(x) = E_{x'} k(x, x') - E_y k(x, y),

``w`` the witness: high where psi draws more than the photos show. ``E_{x'}`` is estimated
from the batch's *other* scenes (a scene's own images share its draw, so they are not
independent of it), and the mean witness of the other scenes is subtracted as a baseline
(unbiased: it does not depend on the scene's own draw); for the parts drawn per class, the mean
over the other scenes of the image's class (objects of different classes differ far more than
one part's draws move them, and the class is drawn independently of those parts).

Features per object (from its box; the kernel compares only objects of the same class: a
class's objects are matched to the photos' objects of that class) and per image, each group
with its own kernel: the mean of
Gaussians whose bandwidths are BANDWIDTH_SCALES times the median distance between the
validation photos' features (one Gaussian that narrow gives no gradient while psi's images are
far from the photos: every kernel value to them is ~0):

- ``shape``: the box's crop at CROP_SIZE^2 pixels, mean 0 and unit length (as for the bins);
- ``colour``: the log mean RGB of the crop's central half (exposure and colour gain);
- ``size``: the log width and height of the box in image sides (a resized crop has lost the
  object's scale, which the distance sets);
- ``context`` (per image): mean and spread of each channel and the mean absolute luminance
  difference between neighbours 1 and 2 pixels apart, across and down, over the pixels outside
  every box (the background; the texture tells apart grey backgrounds alike in colour),
  letterbox padding left out. Each of its dimensions is divided by its spread over the
  photos, and its bandwidth is the median distance from a photo to its *nearest* other photo:
  photos come from a few places, so the median over all pairs measures the distance between
  places, too wide to tell their backgrounds from other ones (at the shift benchmark it
  scored a psi on the two target backgrounds 0.7 % better than one on a wrong pair, the
  nearest-neighbour bandwidth 150 % better).

Each part is moved by the groups it changes (PART_FEATURES): a group a part does not change
adds only noise to that part's estimate, since its witness is independent of the part's draw.
The class mix and the number of objects per image need no images: with a kernel that is 1 for
two objects of one class (two images with as many objects) and 0 otherwise, the MMD^2 is
``|p - q|^2`` between psi's probabilities and the photos' frequencies, whose gradient is exact
(:func:`exact_part_gradients`; sampled, its noise at 32 images per iteration swung the two
target classes' shares to 0.09 / 0.90 in 4 iterations).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from detector.datasets import LETTERBOX_FILL
from detector.targets import ImageBatch
from optimizer.appearance import CROP_SIZE, normalised_crops, raw_object_crops
from optimizer.psi import PARTS, PER_CLASS_PARTS, OptimizerError, Psi, PsiNoise

OBJECT_GROUPS: tuple[str, ...] = ("shape", "colour", "size")
"""Feature groups of each object, compared only between objects of one class."""
IMAGE_GROUPS: tuple[str, ...] = ("context",)
"""Feature groups of each image."""
EXACT_PARTS: frozenset[str] = frozenset({"class_mix", "count"})
"""Parts whose MMD^2 gradient is exact (:func:`exact_part_gradients`), from no features."""

PART_FEATURES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "azimuth": ("shape",),
    "elevation": ("shape", "size"),
    "distance": ("size",),
    "exposure": ("colour",),
    "color_gain": ("colour",),
    "appearance": ("shape", "colour"),
    "pose": ("shape", "size"),
    "background": ("context",),
})
"""The feature groups whose distribution each part of psi changes (all but EXACT_PARTS)."""

BANDWIDTH_SCALES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
"""A group's kernel is the mean of Gaussians with these multiples of its bandwidth."""

BASELINE_BY_CLASS: frozenset[str] = PER_CLASS_PARTS | {"appearance", "pose"}
"""Parts drawn per class given the class: their baseline is the mean over the image's class."""

_DARKEST = 1 / 255
"""Floor of a mean colour before its logarithm: one 8-bit level."""


@dataclass
class SceneFeatures:
    """The feature groups of a batch of images and of their objects. Detached, on the CPU."""

    objects: dict[str, Tensor]
    """Group name (OBJECT_GROUPS) -> [N, D] features of the N kept objects."""
    classes: Tensor
    """[N] class of each object."""
    rows: Tensor
    """[N] image row of each object."""
    images: dict[str, Tensor]
    """Group name (IMAGE_GROUPS) -> [B, D] features of the B images."""
    counts: Tensor
    """[B] labelled objects in each image."""

    @property
    def image_count(self) -> int:
        return self.counts.shape[0]


def scene_features(batch: ImageBatch) -> SceneFeatures:
    """The features of the module docstring for every image and kept object of ``batch``."""
    images = batch.images.detach().float()
    crops, rows, slots = raw_object_crops(images, batch.boxes, batch.keep)
    objects = object_features(crops, batch.boxes.detach().float()[rows, slots], images.shape[-1])
    return SceneFeatures(
        objects={name: value.cpu() for name, value in objects.items()},
        classes=batch.classes[rows, slots].cpu(), rows=rows.cpu(),
        images={"context": context_features(images, batch.boxes.detach(), batch.keep).cpu()},
        counts=batch.keep.sum(1).cpu(),
    )


def object_features(crops: Float[Tensor, "N 3 R R"], boxes: Float[Tensor, "N 4"], size: int) -> dict[str, Tensor]:
    """The OBJECT_GROUPS features (module docstring) of objects cut out as ``crops``
    (:func:`optimizer.appearance.raw_object_crops`) from their ``boxes`` in images of side
    ``size``; differentiable in ``crops``."""
    centre = crops[..., CROP_SIZE // 4 : CROP_SIZE - CROP_SIZE // 4, CROP_SIZE // 4 : CROP_SIZE - CROP_SIZE // 4]
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1.0) / size
    return {"shape": normalised_crops(crops), "colour": centre.mean((2, 3)).clamp_min(_DARKEST).log(), "size": sides.log()}


def context_features(images: Float[Tensor, "B 3 S S"], boxes: Float[Tensor, "B M 4"], keep: Bool[Tensor, "B M"]
             ) -> Float[Tensor, "B 10"]:
    """Per image: mean and standard deviation of each channel, and the texture (mean absolute
    luminance difference of neighbours 1 and 2 pixels apart, across and down), over the pixels
    outside every kept box that are not letterbox padding (all pixels where none is left)."""
    size = images.shape[-1]
    centres = torch.arange(size, device=images.device, dtype=images.dtype) + 0.5
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))  # B M 1 1
    inside = ((centres[None, None, None, :] >= x0) & (centres[None, None, None, :] <= x1)
              & (centres[None, None, :, None] >= y0) & (centres[None, None, :, None] <= y1) & keep[..., None, None])
    padding = (images == LETTERBOX_FILL).all(1)
    outside = ~(inside.any(1) | padding)
    outside = torch.where(outside.flatten(1).any(1)[:, None, None], outside, torch.ones_like(outside))
    weights = outside[:, None].float()
    count = weights.sum((2, 3))
    mean = (images * weights).sum((2, 3)) / count
    spread = (((images - mean[..., None, None]) ** 2 * weights).sum((2, 3)) / count).sqrt()
    luminance, texture = images.mean(1, keepdim=True), []
    for step in (1, 2):  # a pair counts where both of its pixels are background
        across = weights[..., step:] * weights[..., :-step]
        down = weights[..., step:, :] * weights[..., :-step, :]
        for pair, difference in ((across, luminance[..., step:] - luminance[..., :-step]),
                                 (down, luminance[..., step:, :] - luminance[..., :-step, :])):
            texture.append((difference.abs() * pair).sum((1, 2, 3)) / pair.sum((1, 2, 3)).clamp_min(1))
    return torch.cat([mean, spread, torch.stack(texture, 1)], 1)


def feature_bandwidths(val: SceneFeatures) -> dict[str, float | Tensor]:
    """Each group's kernel bandwidth: the median distance between the validation photos'
    features (of objects of one class for the object groups), 1 where that median is 0; for
    ``context`` one per dimension, its spread over the photos times the median distance of a
    photo's standardised features to its nearest other photo's (module docstring)."""
    if val.classes.numel() < 2:
        raise OptimizerError("the appearance objective needs at least 2 validation objects to set its kernels' bandwidths")
    same_class = (val.classes[:, None] == val.classes[None, :]) & ~torch.eye(val.classes.numel(), dtype=torch.bool)
    bandwidths = {}
    for name in OBJECT_GROUPS:
        distances = torch.cdist(val.objects[name], val.objects[name])[same_class]
        bandwidths[name] = float(distances.median()) if distances.numel() else 0.0
    bandwidths = {name: value if value > 0 else 1.0 for name, value in bandwidths.items()}
    spread = val.images["context"].std(0).clamp_min(1e-6)
    standard = val.images["context"] / spread
    distances = torch.cdist(standard, standard) + torch.diag(torch.full((standard.shape[0],), torch.inf))
    nearest = float(distances.min(1).values.median())
    bandwidths["context"] = spread * (nearest if nearest > 0 else 1.0)
    return bandwidths


def multiscale_kernel(a: Float[Tensor, "N D"], b: Float[Tensor, "M D"], bandwidth: float | Tensor
                      ) -> Float[Tensor, "N M"]:
    """The mean of Gaussian kernels of bandwidths ``bandwidth`` (one, or one per dimension)
    times BANDWIDTH_SCALES."""
    squared = torch.cdist(a / bandwidth, b / bandwidth) ** 2
    return torch.stack([torch.exp(-squared / (2 * scale ** 2)) for scale in BANDWIDTH_SCALES]).mean(0)


def group_witness(
    features: SceneFeatures, val: SceneFeatures, group: str, bandwidth: float | Tensor, scenes: Int[Tensor, "B"],
    weights: Float[Tensor, "B"],
) -> tuple[Float[Tensor, "B"], Bool[Tensor, "B"], float]:
    """Per image of ``features``: the witness of ``group`` (the mean over its objects for an
    object group), whether it has one (an image without objects has none), and the batch's
    estimate of the group's MMD^2 less its validation-only term. ``scenes[b]``: the scene of
    image b (images of one scene are never paired); ``weights[b]``: image b's weight in
    psi's expectations (importance weights when the batch was not drawn from psi)."""
    image_level = group in IMAGE_GROUPS
    ours = features.images[group] if image_level else features.objects[group]
    theirs = val.images[group] if image_level else val.objects[group]
    rows = torch.arange(features.image_count) if image_level else features.rows
    classes = None if image_level else (features.classes, features.classes, val.classes)
    witness, to_photos = witness_terms(ours, rows, ours, rows, theirs, classes, bandwidth, scenes, weights)
    per_image = torch.zeros(features.image_count).index_add_(0, rows, witness)
    objects = torch.zeros(features.image_count).index_add_(0, rows, torch.ones_like(witness))
    has = objects > 0
    object_weights = weights[rows]
    mmd = float((object_weights * (witness - to_photos)).sum() / object_weights.sum().clamp_min(1e-12))
    return per_image / objects.clamp_min(1), has, mmd


def witness_terms(
    live: Float[Tensor, "N D"], live_rows: Int[Tensor, "N"], ours: Float[Tensor, "K D"], rows: Int[Tensor, "K"],
    theirs: Float[Tensor, "V D"], classes: tuple[Tensor, Tensor, Tensor] | None, bandwidth: float | Tensor,
    scenes: Int[Tensor, "B"], weights: Float[Tensor, "B"],
) -> tuple[Float[Tensor, "N"], Float[Tensor, "N"]]:
    """For features ``live`` of images ``live_rows``: the witness (the weighted kernel mean to the
    batch's features ``ours`` of images ``rows`` in other scenes, minus the mean to the photos'
    ``theirs``) and that mean to the photos. ``classes``: (live, ours, theirs) classes for object
    groups, whose kernel pairs only objects of one class; None for image groups."""
    to_ours = multiscale_kernel(live, ours, bandwidth)
    to_theirs = multiscale_kernel(live, theirs, bandwidth)
    if classes is not None:
        live_classes, our_classes, their_classes = classes
        to_ours = to_ours * (live_classes[:, None] == our_classes[None, :])
        to_theirs = to_theirs * (live_classes[:, None] == their_classes[None, :])
    other_scene = (scenes[live_rows][:, None] != scenes[rows][None, :]).float() * weights[rows][None, :]
    to_photos = to_theirs.mean(1)
    witness = (to_ours * other_scene).sum(1) / other_scene.sum(1).clamp_min(torch.finfo(torch.float32).tiny)
    return witness - to_photos, to_photos


def appearance_part_gradients(
    psi: Psi, noise: PsiNoise, features: SceneFeatures, val: SceneFeatures, bandwidths: Mapping[str, float | Tensor],
    parts: Collection[str], scenes: Int[Tensor, "B"], weights: Float[Tensor, "B"] | None = None,
) -> dict[str, float]:
    """Accumulate ``d MMD^2 / d psi`` of each of ``parts`` but EXACT_PARTS (summed over its
    groups, PART_FEATURES) into psi's ``.grad`` by the score function, for the images drawn as
    ``noise`` with ``features``; returns each used group's MMD^2 estimate (less its
    validation-only term) as diagnostics ``appearance_mmd_<group>``. ``scenes`` and ``weights``
    as in :func:`group_witness` (default weights 1)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise OptimizerError(f"appearance_part_gradients: unknown parts {sorted(unknown)}; the parts are {list(PARTS)}")
    if noise.batch_size != features.image_count or scenes.shape != (noise.batch_size,):
        raise OptimizerError(f"appearance_part_gradients: noise of {noise.batch_size} images, features of "
                             f"{features.image_count} and scenes {tuple(scenes.shape)} must describe the same images")
    scenes, image_classes = scenes.cpu(), noise.class_ids[:, 0].cpu()
    weights = torch.ones(noise.batch_size) if weights is None else weights.detach().float().cpu()
    parts = set(parts) - EXACT_PARTS
    groups = {group for part in parts for group in PART_FEATURES[part]}
    witnesses, diagnostics = {}, {}
    for group in sorted(groups):
        witnesses[group] = group_witness(features, val, group, bandwidths[group], scenes, weights)
        diagnostics[f"appearance_mmd_{group}"] = witnesses[group][2]
    surrogate = 0.0
    for part in parts:
        reward = sum(witnesses[group][0] for group in PART_FEATURES[part])
        has = torch.stack([witnesses[group][1] for group in PART_FEATURES[part]]).all(0)
        used = weights * has
        other_scene = (scenes[:, None] != scenes[None, :]).float() * used[None, :]
        if part in BASELINE_BY_CLASS:
            same_class = image_classes[:, None] == image_classes[None, :]
            known = (other_scene * same_class).sum(1, keepdim=True) > 0  # (else: every class)
            other_scene = torch.where(known, other_scene * same_class, other_scene)
        baseline = (other_scene * reward[None, :]).sum(1) / other_scene.sum(1).clamp_min(1e-12)
        advantage = torch.where(has, reward - baseline, 0.0) * used
        log_prob = psi.log_prob(noise, {part})
        surrogate = surrogate + 2 * (advantage.to(log_prob) * log_prob).sum() / used.sum().clamp_min(1e-12)
    if torch.is_tensor(surrogate) and surrogate.requires_grad:
        surrogate.backward()
    return diagnostics


def enumerated_bin_weights(psi: Psi, noise: PsiNoise) -> Float[Tensor, "B"]:
    """Importance weights of images whose azimuth bins were set in turn to every bin (the loop's
    ``enumerate_bins``) instead of drawn: per image the product over its objects of K times
    psi's probability of the object's bin, so that weighted means are psi's expectations."""
    bins = psi.config.azimuth_bins
    probs = psi.azimuth_probs().detach()[noise.class_ids, noise.azimuth_bin] * bins
    return torch.where(noise.present, probs, torch.ones_like(probs)).prod(-1)


def exact_part_gradients(psi: Psi, val: SceneFeatures, parts: Collection[str]) -> dict[str, float]:
    """Accumulate the exact ``d MMD^2 / d psi`` of those of ``parts`` in EXACT_PARTS into psi's
    ``.grad``: ``|p - q|^2`` between psi's class probabilities and the validation objects'
    class frequencies, and between psi's probabilities of 1..M objects per image and the
    validation images' (counts clamped to 1..M); returns them as ``appearance_mmd_<part>``."""
    exact = {}
    if "class_mix" in parts:
        wanted = torch.bincount(val.classes, minlength=psi.config.num_classes)[: psi.config.num_classes]
        exact["class_mix"] = (psi.class_probs(), wanted)
    if "count" in parts:
        counts = val.counts.clamp(1, psi.config.max_objects) - 1
        exact["count"] = (psi.count_probs(), torch.bincount(counts, minlength=psi.config.max_objects))
    found = {}
    for part, (probs, wanted) in exact.items():
        wanted = wanted.float().to(probs) / wanted.sum().clamp_min(1)
        discrepancy = ((probs - wanted) ** 2).sum()
        if discrepancy.requires_grad:
            discrepancy.backward()
        found[f"appearance_mmd_{part}"] = float(discrepancy.detach())
    return found
