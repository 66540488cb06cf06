"""One outer step of the ``appearance`` objective (``alignment_objective="appearance"``, the
default preset's): every learnable part of psi descends the MMD between its images and the
validation photos, with no detector gradient. The azimuth bins, when every scene is rendered
at every bin (``enumerate_bins``), take the exact gradient of :mod:`optimizer.appearance`
over every iteration's crops; the other parts the score-function or exact gradients of
:mod:`optimizer.appearance_parts` on this batch, weighted back to psi's bin probabilities, or,
for exposure and colour gain where the estimator differentiates them through the renderer
(``both``, ``pathwise``), the pathwise gradient of :mod:`optimizer.appearance_pathwise`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from detector.targets import ImageBatch
from optimizer.appearance import AppearanceStatistics, crop_bandwidth, object_crops
from optimizer.appearance_pathwise import RenderRows, pathwise_part_gradients
from optimizer.appearance_parts import (
    SceneFeatures,
    appearance_part_gradients,
    enumerated_bin_weights,
    exact_part_gradients,
    feature_bandwidths,
    scene_features,
)
from optimizer.psi import Psi, PsiNoise


@dataclass
class AppearanceTargets:
    """What the validation photos' objects look like, computed once per run."""

    features: SceneFeatures
    bandwidths: dict[str, float | Tensor]
    """Of each feature group (:func:`optimizer.appearance_parts.feature_bandwidths`)."""
    crops: Tensor | None = None
    """The photos' object crops for the enumerated bins (:func:`optimizer.appearance.object_crops`)."""
    crop_classes: Tensor | None = None
    crop_bandwidth: float | None = None

    @classmethod
    def from_validation(cls, val_batch: ImageBatch, bins: bool) -> "AppearanceTargets":
        """The targets of ``val_batch``, with the bins' crops when ``bins`` (enumerated bins);
        OptimizerError when it has too few objects to set a kernel's bandwidth."""
        features = scene_features(val_batch)
        targets = cls(features, feature_bandwidths(features))
        if bins:
            targets.crops, rows, slots = object_crops(val_batch.images, val_batch.boxes, val_batch.keep)
            targets.crop_classes = val_batch.classes[rows, slots]
            targets.crop_bandwidth = crop_bandwidth(targets.crops)
        return targets

    def bin_statistics(self) -> AppearanceStatistics | None:
        """Empty statistics of the enumerated bins' crops (None without them)."""
        return None if self.crop_bandwidth is None else AppearanceStatistics(bandwidth=self.crop_bandwidth)


def appearance_step(
    psi: Psi, batch: ImageBatch, noise: PsiNoise, parts: Collection[str], pose_group: int,
    targets: AppearanceTargets, bins: AppearanceStatistics | None,
    pathwise: Collection[str] = (), render: RenderRows | None = None, chunk: int = 8,
) -> dict:
    """Accumulate the MMD^2's gradient of every one of ``parts`` into psi's ``.grad`` for the
    images ``batch`` drawn as ``noise`` (consecutive groups of ``pose_group`` images are one
    scene); with ``bins`` (the enumerated bins' statistics, updated here) the azimuth by
    :class:`optimizer.appearance.AppearanceStatistics`; those of ``parts`` in ``pathwise``
    through ``render`` (``chunk`` images a call: :mod:`optimizer.appearance_pathwise`), the
    rest by the score function. Returns diagnostics."""
    found: dict = {}
    scenes = torch.div(torch.arange(noise.batch_size), pose_group, rounding_mode="floor")
    parts = set(parts)
    weights = None
    if bins is not None:
        crops, rows, slots = object_crops(batch.images, batch.boxes, batch.keep)
        logits = psi.azimuth_logits
        bins.update(crops, batch.classes[rows, slots], noise.azimuth_bin[rows, slots], scenes[rows.cpu()])
        gradient, found = bins.gradient(logits, targets.crops, targets.crop_classes)
        logits.grad = gradient if logits.grad is None else logits.grad + gradient
        parts -= {"azimuth"}
        weights = enumerated_bin_weights(psi, noise)
    if parts:
        features, pathwise = scene_features(batch), parts & set(pathwise)
        found.update(appearance_part_gradients(psi, noise, features, targets.features,
                                               targets.bandwidths, parts - pathwise, scenes, weights))
        found.update(exact_part_gradients(psi, targets.features, parts))
        if pathwise:
            found.update(pathwise_part_gradients(features, targets.features, targets.bandwidths, pathwise, batch,
                                                 render, chunk, scenes, weights))
    return found
