"""Every job's uniform baseline: did the loop help?

The baseline arm trains the same detector with the same training (epochs, batch, trainer
overrides, start weights, seed, the same share of real photos) on as many images as the final
dataset, rendered with the same draws (seed) from the starting psi instead of the learned one:
uniform, or the priors taken from the photos (optimizer.priors). Both detectors are scored on
the test set; without one, on validation photos held out of the whole run (:func:`hold_out`).
The difference in mAP50-95 comes with a paired bootstrap interval over the test images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from detector.datasets import LabelledSet
from detector.evaluate import predict_dataset, resampled_map50_95
from detector.mixing import write_training_mix
from detector.model import load_detector
from optimizer.arms import difference, train_arm
from optimizer.config import OptimizeConfig
from optimizer.part_names import SNAPSHOT_KEYS

FOLDER = "uniform_baseline"
"""Run-folder entry of the baseline arm (its dataset, training folder and Ultralytics' run)."""
MIN_PHOTOS_TO_HOLD_OUT = 8
"""Fewest validation photos of which a quarter is held out when a job has no test set."""
RESAMPLES = 200
"""Bootstrap resamples of the test images for the difference's interval."""


def hold_out(photos: LabelledSet, seed: int) -> tuple[LabelledSet, LabelledSet | None]:
    """(what the run may see, the held-out test set): a quarter of ``photos`` drawn by ``seed``,
    or (``photos``, None) when there are fewer than MIN_PHOTOS_TO_HOLD_OUT."""
    if len(photos) < MIN_PHOTOS_TO_HOLD_OUT:
        return photos, None
    order = np.random.default_rng(seed).permutation(len(photos))
    held = set(order[: len(photos) // 4].tolist())
    kept = [item for i, item in enumerate(photos.images) if i not in held]
    test = [item for i, item in enumerate(photos.images) if i in held]
    return (LabelledSet(kept, list(photos.class_names), photos.source),
            LabelledSet(test, list(photos.class_names), photos.source))


def psi_before_after(before: dict, after: dict, learnable: list[str]) -> dict:
    """Per learned part: its Psi.snapshot() entry at the start and at the end."""
    keys = {part: SNAPSHOT_KEYS[part] for part in learnable}
    return {part: {"before": before[key], "after": after[key]} for part, key in keys.items() if key in before}


def paired_bootstrap(final: tuple, baseline: tuple, class_names: list[str], seed: int,
                     resamples: int = RESAMPLES) -> dict:
    """Mean, standard deviation and 2.5 / 97.5 % quantiles of final - baseline mAP50-95 over
    ``resamples`` resamples (with replacement) of the test images, the same images for both
    detectors. ``final``, ``baseline``: :func:`detector.evaluate.predict_dataset` results."""
    boxes = final[1]
    generator = np.random.default_rng(seed)
    drawn = [rows for rows in (generator.integers(0, len(boxes), len(boxes)) for _ in range(resamples))
             if any(len(boxes[row]) for row in rows)]  # a resample without any box has no mAP
    if not drawn:
        return {"mean": None, "std": None, "low": None, "high": None, "resamples": 0}
    scores = [np.array(resampled_map50_95(*arm, class_names, drawn)) for arm in (final, baseline)]
    values = scores[0] - scores[1]
    return {"mean": float(values.mean()), "std": float(values.std()), "low": float(np.quantile(values, 0.025)),
            "high": float(np.quantile(values, 0.975)), "resamples": len(drawn)}


def uniform_baseline(
    config: OptimizeConfig,
    class_names: list[str],
    render: Callable[[Path], None],
    photos: LabelledSet,
    test_set: LabelledSet,
    evaluated_on: str,
    final: dict,
    final_detector: Path,
    run_dir: Path,
    train: Callable[..., Path | None],
    *,
    image_size: int,
    device: torch.device,
    progress: bool,
    should_stop: Callable[[], bool],
) -> dict | None:
    """Train and score the baseline arm; returns the report's ``baseline`` (``test``: its
    metrics, per-class AP included) and ``difference`` entries (the final detector's ``final``
    test metrics minus the baseline's; its mAP50-95 with a paired bootstrap interval), or None
    when ``should_stop`` stopped it.
    ``render(folder)`` renders the final dataset's draws from the starting psi into ``folder``;
    ``photos`` are the real photos the final training mixed in (config.final.real_share);
    ``evaluated_on`` says what ``test_set`` is (the test set, or held-out validation photos);
    ``image_size``: the final detector's (optimizer.final_size), for training and scoring."""
    folder = Path(run_dir) / FOLDER
    render(folder / "dataset")
    mix = write_training_mix(folder / "dataset", photos, folder / "data", config.final.real_share)
    arm = train_arm(config, class_names, run_dir, folder / "train", mix.data_dir, test_set, train, image_size=image_size, device=device,
                    progress=progress, should_stop=should_stop)
    if arm is None:
        return None
    best, metrics = arm
    predictions = [predict_dataset(load_detector(path, device), test_set, image_size, progress=progress)
                   for path in (final_detector, best)]
    change = difference(final, metrics)
    change["map50_95_bootstrap"] = paired_bootstrap(*predictions, test_set.class_names, seed=config.seed)
    return {"baseline": {"test": metrics, "training_data": mix.summary(), "evaluated_on": evaluated_on,
                         "test_images": len(test_set)},
            "difference": change}

