"""Comparison arms of a job: the same detector, trained the same way on other data, scored on
the same test set as the final detector (the real-only baseline of optimizer.real_training and
the uniform baseline of optimizer.uniform_baseline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from detector.datasets import LabelledSet
from detector.evaluate import DetectionMetrics, evaluate
from detector.model import load_detector
from optimizer.config import OptimizeConfig


def metrics_entry(metrics: DetectionMetrics) -> dict:
    """The report's form of a detector's metrics on one set."""
    return {"map50_95": metrics.map50_95, "map50": metrics.map50, "per_class_ap": metrics.per_class_ap}


def train_arm(
    config: OptimizeConfig,
    class_names: list[str],
    run_dir: Path,
    folder: Path,
    data_dir: Path,
    test_set: LabelledSet,
    train: Callable[..., Path | None],
    *,
    image_size: int,
    device: torch.device,
    progress: bool,
    should_stop: Callable[[], bool],
) -> tuple[Path, dict] | None:
    """Train ``config``'s final detector on ``data_dir`` into ``folder`` with ``train``
    (:func:`optimizer.final_training.train_final_detector`: the final detector's epochs, batch, trainer
    overrides and seed), both at ``image_size`` (the final detector's: optimizer.final_size), and
    evaluate it on ``test_set``. Returns its best checkpoint and test metrics, or None when
    ``should_stop`` stopped the training."""
    best = train(config, class_names, run_dir, folder, seed=config.seed, device=device, progress=progress,
                 data_dir=data_dir, should_stop=should_stop, image_size=image_size)
    if best is None:
        return None
    return best, metrics_entry(evaluate(load_detector(best, device), test_set, image_size, progress=progress))


def difference(final: dict, other: dict) -> dict:
    """The final detector's metrics minus an arm's (mAP50-95, mAP50 and each class's AP50-95;
    None for a class one of them lacks; positive: the final detector is better)."""
    classes = sorted(set(final["per_class_ap"]) | set(other["per_class_ap"]))
    return {
        "map50_95": final["map50_95"] - other["map50_95"],
        "map50": final["map50"] - other["map50"],
        "per_class_ap": {
            name: (final["per_class_ap"][name] - other["per_class_ap"][name]
                   if name in final["per_class_ap"] and name in other["per_class_ap"] else None)
            for name in classes
        },
    }
