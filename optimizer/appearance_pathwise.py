"""The appearance objective's reparameterised (pathwise) gradient, for the parts the renderer
differentiates (exposure and colour gain under the ``both`` estimator).

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
from optimizer.appearance import CROP_SIZE, normalised_crops
from optimizer.appearance_parts import (
    IMAGE_GROUPS,
    PART_FEATURES,
    SceneFeatures,
    context_features,
    group_witness,
    multiscale_kernel,
)

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
    quarter = CROP_SIZE // 4
    centre = crops[..., quarter:CROP_SIZE - quarter, quarter:CROP_SIZE - quarter]
    sides = (boxes[local, slots, 2:] - boxes[local, slots, :2]).clamp_min(1.0) / images.shape[-1]
    features = {"shape": normalised_crops(crops), "colour": centre.mean((2, 3)).clamp_min(1 / 255).log(),
                "size": sides.log()}
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
    :func:`optimizer.appearance_parts.group_witness`."""
    groups = sorted({group for part in parts for group in PART_FEATURES[part]})
    weights = torch.ones(features.image_count) if weights is None else weights.detach().float().cpu()
    scenes = scenes.cpu()
    diagnostics = {f"appearance_mmd_{group}": group_witness(features, val, group, bandwidths[group], scenes, weights)[2]
                   for group in groups}
    for start in range(0, features.image_count, chunk):
        rows = slice(start, min(start + chunk, features.image_count))
        images = render(rows)
        objects, object_rows, object_classes = live_object_features(images, batch, rows)
        surrogate = images.new_zeros(())
        for group in groups:
            if group in IMAGE_GROUPS:
                live = context_features(images, batch.boxes[rows].detach(), batch.keep[rows])
                live_rows, own_rows, classes = torch.arange(rows.start, rows.stop), torch.arange(len(weights)), None
                ours, theirs, total = features.images[group], val.images[group], weights.sum()
            else:
                live, live_rows, own_rows = objects[group], object_rows, features.rows
                classes = (object_classes, features.classes, val.classes)
                ours, theirs, total = features.objects[group], val.objects[group], weights[features.rows].sum()
            surrogate = surrogate + _witness_sum(live.cpu(), live_rows, ours, own_rows, theirs, classes,
                                                 bandwidths[group], scenes, weights, total.clamp_min(1e-12))
        if surrogate.requires_grad:
            surrogate.backward()
    return diagnostics


def _witness_sum(live: Tensor, live_rows: Tensor, ours: Tensor, own_rows: Tensor, theirs: Tensor,
                 classes: tuple[Tensor, Tensor, Tensor] | None, bandwidth: float | Tensor, scenes: Tensor,
                 weights: Tensor, total: Tensor) -> Tensor:
    """``2 / n sum_i weight_i w(live_i)``: the witness of each live feature against the batch's
    other scenes' features ``ours`` (held fixed) and the photos' ``theirs``."""
    to_ours = multiscale_kernel(live, ours, bandwidth)
    to_theirs = multiscale_kernel(live, theirs, bandwidth)
    if classes is not None:
        live_classes, our_classes, their_classes = classes
        to_ours = to_ours * (live_classes[:, None] == our_classes[None, :])
        to_theirs = to_theirs * (live_classes[:, None] == their_classes[None, :])
    other_scene = (scenes[live_rows][:, None] != scenes[own_rows][None, :]).float() * weights[own_rows][None, :]
    witness = (to_ours * other_scene).sum(1) / other_scene.sum(1).clamp_min(torch.finfo(torch.float32).tiny)
    witness = witness - to_theirs.mean(1)
    return 2 * (weights[live_rows] * witness).sum() / total
