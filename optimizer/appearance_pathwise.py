"""The appearance objective's reparameterised (pathwise) gradient, for the parts the renderer
differentiates that do not move the boxes (exposure and colour gain, PATHWISE_PARTS, under the
``both`` or ``pathwise`` estimator).

The score-function estimate of :mod:`optimizer.appearance_parts` weighs each image's witness
by ``d log p / d psi = (x - mu) / sigma^2``: for a narrow distribution (a colour gain's log
spread is 0.05 by default) its variance grows as ``1 / sigma^2``, and Adam, which moves by the
sign more than the size, walked the colour gain away from the photos' (benchmarks/shift.py,
seeds 1 and 2). The pathwise estimate instead differentiates each image's features through
the renderer: with the other images' features held fixed,

    d MMD^2 / d f_i = (2 / n) d w(f_i) / d f_i,

``w`` the witness of :mod:`optimizer.appearance_parts` (kernel mean to psi's other scenes minus
to the photos), so ``(2 / n) sum_i w(f_i)`` with live ``f_i`` is a surrogate whose gradient is
the MMD^2's. Its variance does not depend on psi's spread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torchvision.ops import roi_align

from detector.targets import ImageBatch
from optimizer.appearance import CROP_SIZE
from optimizer.appearance_parts import PART_FEATURES, SceneFeatures, group_witness, object_features, witness_terms
from optimizer.errors import OptimizerError
from optimizer.part_names import DISCRETE_PARTS, GEOMETRIC_PARTS, REPARAMETERISED_PARTS

PATHWISE_PARTS: frozenset[str] = REPARAMETERISED_PARTS - DISCRETE_PARTS - GEOMETRIC_PARTS
"""The parts whose appearance gradient can go through the renderer (exposure and colour gain):
the features are taken at the recorded boxes, so a part that moves the object (and its box)
would be seen moving inside a box that stays put, and its box sizes would give it none."""

RenderRows = Callable[[slice], Float[Tensor, "b 3 S S"]]
"""Renders rows of the batch again from their recorded draws, with gradients to psi's pathwise
parts (the images the batch holds, bit for bit under the psi that drew them)."""


def live_object_features(images: Float[Tensor, "b 3 S S"], batch: ImageBatch, rows: slice
                         ) -> tuple[dict[str, Tensor], Int[Tensor, "N"], Int[Tensor, "N"]]:
    """The object feature groups of :func:`optimizer.appearance_parts.scene_features` for rows
    ``rows`` of ``batch`` rendered as ``images``, differentiable in ``images``; with each
    object's image row in the batch and its class."""
    keep, boxes = batch.keep[rows], batch.boxes[rows].detach()
    local, slots = keep.nonzero(as_tuple=True)
    regions = torch.cat([local[:, None].to(images.dtype), boxes[local, slots].to(images.dtype)], 1)
    crops = roi_align(images, regions, CROP_SIZE, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    features = object_features(crops, boxes[local, slots].float(), images.shape[-1])
    return features, (local + rows.start).cpu(), batch.classes[rows][local, slots].cpu()


def pathwise_part_gradients(
    features: SceneFeatures, val: SceneFeatures, bandwidths: Mapping[str, float | Tensor], parts: Collection[str],
    batch: ImageBatch, render: RenderRows, chunk: int, scenes: Int[Tensor, "B"], weights: Float[Tensor, "B"] | None,
) -> dict[str, float]:
    """Accumulate ``d MMD^2 / d psi`` of the feature groups ``parts`` change (PART_FEATURES)
    into psi's ``.grad`` through ``render`` (which gives gradients to ``parts`` alone), ``chunk``
    images at a time; returns each group's MMD^2 estimate as ``appearance_mmd_<group>`` (as
    :func:`optimizer.appearance_parts.appearance_part_gradients`). ``features``: the batch's
    detached features (scene_features); ``scenes``, ``weights`` as in
    :func:`optimizer.appearance_parts.group_witness`. OptimizerError for a part not in
    PATHWISE_PARTS."""
    if not set(parts) <= PATHWISE_PARTS:
        raise OptimizerError(f"pathwise_part_gradients: {sorted(set(parts) - PATHWISE_PARTS)} cannot be differentiated "
                             f"through the renderer here; only {sorted(PATHWISE_PARTS)} can")
    groups = sorted({group for part in parts for group in PART_FEATURES[part]})
    weights = torch.ones(features.image_count) if weights is None else weights.detach().float().cpu()
    scenes = scenes.cpu()
    diagnostics = {f"appearance_mmd_{group}": group_witness(features, val, group, bandwidths[group], scenes, weights)[2]
                   for group in groups}
    total = weights[features.rows].sum().clamp_min(1e-12)
    for start in range(0, features.image_count, chunk):
        rows = slice(start, min(start + chunk, features.image_count))
        images = render(rows)
        objects, object_rows, object_classes = live_object_features(images, batch, rows)
        surrogate = images.new_zeros(())
        classes = (object_classes, features.classes, val.classes)
        for group in groups:  # (object groups alone: those of PATHWISE_PARTS)
            # (2 / n) sum_i weight_i w(f_i), the other images' features held fixed
            witness, _ = witness_terms(objects[group].cpu(), object_rows, features.objects[group], features.rows,
                                       val.objects[group], classes, bandwidths[group], scenes, weights)
            surrogate = surrogate + 2 * (weights[object_rows] * witness).sum() / total
        if surrogate.requires_grad:
            surrogate.backward()
    return diagnostics
