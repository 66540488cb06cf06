"""The appearance objective's pathwise gradient (optimizer.appearance_pathwise): through a tiny
differentiable renderer, the colour gain's gradient equals central differences of the batch's
MMD^2 estimate (the same draws at both ends), and it points the gain toward the photos'."""

from __future__ import annotations

import pytest
import torch

from detector.targets import ImageBatch
from optimizer.appearance_parts import feature_bandwidths, group_witness, scene_features
from optimizer.appearance_pathwise import pathwise_part_gradients
from optimizer.psi import PARTS, OptimizerError, Psi, PsiConfig

SIZE, BOX = 32, torch.tensor([8.0, 8.0, 24.0, 24.0])
BASE = torch.tensor([0.5, 0.4, 0.3])
"""Every object's colour before its gain, on a grey background."""


def _batch(log_gains: torch.Tensor) -> ImageBatch:
    """One object per image, its box filled with BASE times its gain (B x 3 logs)."""
    images = torch.full((log_gains.shape[0], 3, SIZE, SIZE), 0.5)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[8:24, 8:24] = True
    images = torch.where(inside, (BASE * log_gains.exp())[:, :, None, None], images)
    count = log_gains.shape[0]
    return ImageBatch(images, BOX.expand(count, 1, 4).clone(), torch.zeros(count, 1, dtype=torch.long),
                      torch.ones(count, 1, dtype=torch.bool))


def test_colour_gain_gradient_matches_finite_differences_and_points_to_the_photos() -> None:
    psi = Psi(PsiConfig(num_classes=1, color_gain_log_std=0.05, **{f"learn_{p}": p == "color_gain" for p in PARTS}))
    noise = psi.sample(24, 0).noise
    val = scene_features(_batch(torch.log(torch.tensor([1.4, 1.0, 0.65])).expand(12, 3)
                                + 0.03 * torch.randn(12, 3, generator=torch.Generator().manual_seed(1))))
    bandwidths = feature_bandwidths(val)
    scenes = torch.arange(24)

    def render(rows: slice) -> torch.Tensor:
        return _batch(psi.replay(noise.index(rows), {"color_gain"}).color_gain[:, 0].log()).images

    with torch.no_grad():
        batch = _batch(psi.replay(noise).color_gain[:, 0].log())
    pathwise_part_gradients(scene_features(batch), val, bandwidths, {"color_gain"}, batch, render, 5, scenes, None)
    estimate = psi.color_gain_loc.grad[0].clone()

    def mmd(loc: torch.Tensor) -> float:  # the batch's estimate less its photos-only term
        with torch.no_grad():
            psi.color_gain_loc.copy_(loc)
            features = scene_features(_batch(psi.replay(noise).color_gain[:, 0].log()))
        return group_witness(features, val, "colour", bandwidths["colour"], scenes, torch.ones(24))[2]

    start, step, exact = psi.color_gain_loc.detach().clone(), 1e-3, []
    for channel in range(3):
        shift = torch.zeros_like(start)
        shift[0, channel] = step
        exact.append((mmd(start + shift) - mmd(start - shift)) / (2 * step))
    exact = torch.tensor(exact)
    torch.testing.assert_close(estimate, exact, atol=0.02 * float(exact.norm()), rtol=0)
    assert estimate[0] < 0 < estimate[2]  # descending it raises red and lowers blue, as the photos are


def test_a_part_that_moves_the_boxes_is_refused() -> None:
    """The features are taken at the recorded boxes: the distance would get no gradient."""
    batch = _batch(torch.zeros(2, 3))
    features = scene_features(batch)
    with pytest.raises(OptimizerError, match=r"\['distance'\] cannot be differentiated through the renderer"):
        pathwise_part_gradients(features, features, feature_bandwidths(features), {"distance", "exposure"}, batch,
                                lambda rows: batch.images[rows], 2, torch.arange(2), None)
