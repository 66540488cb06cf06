"""The appearance objective's crops and statistics (optimizer.appearance) on synthetic data."""

from __future__ import annotations

import pytest
import torch

from optimizer.appearance import CROP_SIZE, AppearanceStatistics, crop_bandwidth, object_crops
from optimizer.baselines import azimuth_total_variation
from optimizer.psi import OptimizerError


def test_object_crops_keep_each_kept_object_and_drop_its_brightness() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    boxes = torch.tensor([[[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 1.0, 1.0]],
                          [[5.0, 5.0, 30.0, 30.0], [1.0, 2.0, 9.0, 12.0]],
                          [[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]]])
    keep = torch.tensor([[True, False], [True, True], [False, False]])
    crops, rows, slots = object_crops(images, boxes, keep)
    assert crops.shape == (3, 3 * CROP_SIZE * CROP_SIZE)
    assert rows.tolist() == [0, 1, 1] and slots.tolist() == [0, 0, 1]
    torch.testing.assert_close(crops.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(crops.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    dimmer, _, _ = object_crops(0.4 * images + 0.1, boxes, keep)  # another exposure, the same object
    torch.testing.assert_close(dimmer, crops, atol=1e-5, rtol=1e-5)
    moved, _, _ = object_crops(images, boxes + 3.0, keep)
    assert not torch.allclose(moved, crops)


def _prototype_data(scenes: int, bins: int, val_bins: list[int], noise: float, seed: int = 0):
    """Crops of ``scenes`` scenes at every bin: bin k looks like prototype k plus noise; the
    validation crops look like the prototypes of ``val_bins`` (equally many of each)."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.nn.functional.normalize(torch.randn(bins, 48, generator=generator), dim=1)

    def jitter(rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(rows + noise * torch.randn(rows.shape, generator=generator), dim=1)

    crops = jitter(prototypes.repeat(scenes, 1))
    val_crops = jitter(prototypes[torch.tensor(val_bins)].repeat(6, 1))
    return (crops, torch.arange(bins).repeat(scenes), torch.arange(scenes).repeat_interleave(bins), val_crops)


def test_descending_the_appearance_mmd_reaches_the_validation_mixture_not_one_bin() -> None:
    """Validation objects seen from bins 1 and 2 in equal numbers: the MMD's minimiser over the
    bins is close to half and half (a linear objective would put everything on one bin)."""
    bins = 6
    crops, crop_bins, scenes, val_crops = _prototype_data(scenes=5, bins=bins, val_bins=[1, 2], noise=0.3)
    val_classes = torch.zeros(val_crops.shape[0], dtype=torch.long)
    statistics = AppearanceStatistics(bandwidth=crop_bandwidth(val_crops))
    statistics.update(crops, torch.zeros(crops.shape[0], dtype=torch.long), crop_bins, scenes)
    logits = torch.zeros(1, bins)
    for _ in range(3000):
        gradient, found = statistics.gradient(logits, val_crops, val_classes)
        logits -= 2.0 * gradient
    target = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0])
    probs = logits.softmax(-1)[0]
    assert azimuth_total_variation(probs, target) < 0.1, probs
    assert min(probs[1], probs[2]) > 0.3, probs
    assert found["appearance_classes"] == 1
    # Everything on bin 1 alone is further from the validation objects than the mixture.
    on_one = torch.full((1, bins), -30.0).index_fill(1, torch.tensor([1]), 0.0)
    assert statistics.gradient(on_one, val_crops, val_classes)[1]["appearance_mmd"] > found["appearance_mmd"]


def test_only_pairs_from_different_scenes_and_classes_with_validation_objects_count() -> None:
    """One scene gives no pair of different scenes: no estimate of A, so no gradient; a class
    without validation objects adds nothing; a scene of a later batch pairs with the first."""
    bins = 4
    crops, crop_bins, scenes, val_crops = _prototype_data(scenes=2, bins=bins, val_bins=[0], noise=0.1)
    val_classes = torch.zeros(val_crops.shape[0], dtype=torch.long)
    statistics = AppearanceStatistics(bandwidth=1.0)
    first = scenes == 0
    # One batch: a scene of class 0 and one of class 1 (which has no validation object).
    statistics.update(crops, (~first).long(), crop_bins, scenes)
    gradient, found = statistics.gradient(torch.zeros(2, bins), val_crops, val_classes)
    assert found["appearance_classes"] == 0 and not gradient.any()
    # The next batch's scene 0 is another scene than the first batch's scene 0.
    statistics.update(crops[~first], torch.zeros(bins, dtype=torch.long), crop_bins[~first], scenes[first])
    assert statistics.scenes.tolist() == [0] * bins + [1] * bins + [2] * bins
    quadratic, _, measured = statistics.terms(val_crops, val_classes, (2, bins))
    assert measured.tolist() == [True, False]
    gradient, found = statistics.gradient(torch.zeros(2, bins), val_crops, val_classes)
    assert found["appearance_classes"] == 1 and not gradient[1].any()
    assert gradient[0].argmin() == 0  # descending raises bin 0, the validation objects' bin
    # Class 0's two scenes' views of the same bin are alike (noise 0.1): A's diagonal is high.
    assert quadratic[0].diagonal().min() > quadratic[0].fill_diagonal_(0).max()


def test_appearance_statistics_refuse_what_they_cannot_use() -> None:
    statistics = AppearanceStatistics(bandwidth=1.0)
    val_crops, val_classes = torch.ones(2, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(OptimizerError, match="no batch yet"):
        statistics.gradient(torch.zeros(1, 4), val_crops, val_classes)
    with pytest.raises(OptimizerError, match="must describe the same objects"):
        statistics.update(torch.zeros(3, 8), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                          torch.zeros(3, dtype=torch.long))
    with pytest.raises(OptimizerError, match="at least 2 validation objects"):
        crop_bandwidth(torch.ones(1, 8))
