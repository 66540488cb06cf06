"""The job's labelled real photos beyond the loop's validation: backgrounds cut from them away
from their boxes (renderer.harvest), the final detector's training (beside the rendered
dataset), and the same detector trained on them alone, the baseline the report sets nerfsim's
detector against on the test set.

The photos are the validation target (``targets.val``), never the test set. Why a third of each
epoch by default (``OptimizeConfig.final.real_share``): a user brings tens of photos, often
near-duplicate frames, against hundreds of rendered images. Taken once each they are a few
percent of an epoch and barely move the detector; as the majority the detector fits those few
frames and forgets what only the renders show (classes, poses and backgrounds absent from the
photos). At a third, a batch of 16 holds about five photos, so every optimiser step sees the
real domain while two thirds of it still come from the renders. Not tuned on any data set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from detector.datasets import LabelledSet
from detector.mixing import TrainingMix, write_real_only, write_training_mix
from optimizer.arms import difference, train_arm
from optimizer.config import OptimizeConfig
from renderer.backgrounds import BackgroundError, BackgroundSet
from renderer.harvest import harvested_backgrounds

LOGGER = logging.getLogger(__name__)

MIX_FOLDER = "final_data"
"""Run-folder entry of the final detector's training folder when it holds photos."""
REAL_ONLY_FOLDER = "real_only"
"""Run-folder entry of the real-only baseline (its training folder and Ultralytics' run)."""


def photo_backgrounds(photos: LabelledSet) -> BackgroundSet | None:
    """Backgrounds harvested from ``photos`` away from every labelled box, or None (logged,
    with the reason) when no photo leaves a large enough region: the scene's procedural
    textures are then the fallback."""
    try:
        return harvested_backgrounds([(item.path, item.boxes) for item in photos.images])
    except BackgroundError as error:
        LOGGER.warning("%s: %s; rendering on the scene's procedural textures instead", photos.source, error)
        return None


def final_training_data(config: OptimizeConfig, photos: LabelledSet, dataset_dir: Path, run_dir: Path) -> TrainingMix:
    """The folder the final detector trains on: the rendered dataset plus the photos
    (``config.final.real_share`` of each epoch), or the rendered dataset alone when the share
    is 0. ``photos`` carry the scene's class ids (the loop's remapped validation set)."""
    return write_training_mix(dataset_dir, photos, Path(run_dir) / MIX_FOLDER, config.final.real_share)


def train_real_only(
    config: OptimizeConfig,
    class_names: list[str],
    photos: LabelledSet,
    test_set: LabelledSet,
    images_per_epoch: int,
    run_dir: Path,
    train: Callable[..., Path],
    *,
    device: torch.device,
    progress: bool,
    should_stop: Callable[[], bool],
    image_size: int,
) -> dict | None:
    """Train the final detector's architecture with the same settings (epochs, batch,
    ``image_size``: the final detector's, trainer overrides, seed) from the config's initial weights (never the warmed-up
    ones: they have seen renders) on ``photos`` alone, repeated to ``images_per_epoch`` per
    epoch, i.e. as many optimiser steps as the final detector made; evaluate it on
    ``test_set``. ``train`` is :func:`optimizer.loop.train_final_detector`. Returns the test
    metrics, or None when ``should_stop`` stopped the training."""
    folder = Path(run_dir) / REAL_ONLY_FOLDER
    mix = write_real_only(photos, folder / "data", images_per_epoch)
    from_initial = replace(config, final=replace(config.final, init="initial"))
    arm = train_arm(from_initial, class_names, run_dir, folder / "train", mix.data_dir,
                    test_set, train, image_size=image_size, device=device, progress=progress,
                    should_stop=should_stop)
    if arm is None:
        return None
    return {**arm[1], "training_data": mix.summary()}


def compare_with_real_only(final_test: dict, real_only_test: dict) -> dict:
    """The report's ``real_only`` entry: the baseline's test metrics and nerfsim's minus them
    (mAP50-95, mAP50 and each class's AP50-95; positive: nerfsim's detector is better)."""
    return {"test": real_only_test, "difference": difference(final_test, real_only_test)}
