"""Neural-sim's every-bin batches (enumerate_bins, the lookahead estimator): each group of
``pose_group`` scenes shares all but the azimuth and is rendered at every azimuth bin, in
order; the detector then trains on rows resampled in proportion to psi's bin probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from detector.targets import ImageBatch
from optimizer.psi import PsiNoise
from optimizer.seeds import generator

if TYPE_CHECKING:
    from optimizer.context import LoopContext


def at_every_bin(noise: PsiNoise, pose_group: int) -> None:
    """Put each group of ``pose_group`` consecutive draws at bins 0 .. pose_group - 1 (in place)."""
    bins = torch.arange(pose_group, device=noise.azimuth_bin.device).repeat(noise.batch_size // pose_group)
    noise.azimuth_bin[:] = bins[:, None]


def rows_by_psi(loop: LoopContext, noise: PsiNoise, iteration: int, count: int, purpose: str) -> Tensor:
    """``count`` rows of an every-bin batch, drawn with replacement in proportion to psi's
    probability of each row's bin (CPU indices)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    probs = loop.psi.azimuth_probs().detach()[noise.class_ids[:, 0], noise.azimuth_bin[:, 0]]
    return torch.multinomial(probs.cpu(), count, replacement=True,
                             generator=generator(loop.config.seed, iteration, purpose))


def resample_by_psi(loop: LoopContext, batch: ImageBatch, noise: PsiNoise, iteration: int) -> ImageBatch:
    """As many rows of an every-bin batch as it has, drawn in proportion to psi's
    probability of each row's bin: training images distributed as psi says."""
    rows = rows_by_psi(loop, noise, iteration, noise.batch_size, "resample")
    return batch.index(rows.to(batch.images.device))


def mean_by_class_and_bin(rewards: Tensor, noise: PsiNoise, classes: int, bins: int) -> Tensor:
    """(classes, bins): the mean reward of the images whose first object is of each class and
    fell in each bin; 0 for a class without images (a constant row: no gradient)."""
    index = (noise.class_ids[:, 0] * bins + noise.azimuth_bin[:, 0]).to(rewards.device)
    sums = torch.zeros(classes * bins, device=rewards.device, dtype=rewards.dtype).index_add_(0, index, rewards.detach())
    counts = torch.bincount(index, minlength=classes * bins).to(rewards.dtype)
    return (sums / counts.clamp_min(1)).reshape(classes, bins)


def mean_by_bin(rewards: Tensor, noise: PsiNoise, bins: int) -> list[float | None]:
    """Mean reward of the images whose first object fell in each azimuth bin (None: no image)."""
    chosen = noise.azimuth_bin[:, 0].cpu()
    rewards = rewards.detach().cpu()
    return [float(rewards[chosen == k].mean()) if (chosen == k).any() else None for k in range(bins)]
