"""The final detector's training with Ultralytics' trainer (the final stage and its baselines)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from detector.model import DetectorConfig, load_detector
from detector.train import train_on_dataset
from optimizer.config import OptimizeConfig

WARMUP_DETECTOR = "warmup_detector.pt"
"""The detector after the warm-up, in the run folder when final_init is 'warmup'."""


class Stopped(Exception):
    """``should_stop()`` said yes inside a stage (raised to leave Ultralytics' trainer)."""


def detector_config(config: OptimizeConfig, class_names: list[str]) -> DetectorConfig:
    """The detector a run of ``config`` builds at its start."""
    return DetectorConfig(arch=config.detector.arch, weights=config.detector.weights, class_names=list(class_names),
                          image_size=config.detector.image_size, seed=config.seed)


def train_final_detector(
    config: OptimizeConfig,
    class_names: list[str],
    run_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
    callbacks: dict | None = None,
    data_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    image_size: int | None = None,
) -> Path | None:
    """Train a final detector on ``data_dir`` (a YOLO folder; default ``run_dir/dataset``) as
    the final stage does (from the initial or the warmed-up weights: final_init), at
    ``image_size`` (default ``config.detector.image_size``; the final stage passes the photos' size,
    optimizer.final_size), with Ultralytics' trainer seeded by ``seed``; returns its best
    checkpoint, or None when ``should_stop()``, asked after every batch, said yes."""
    start = (load_detector(Path(run_dir) / WARMUP_DETECTOR) if config.final.init == "warmup"
             else detector_config(config, class_names))
    callbacks = {event: list(functions) for event, functions in (callbacks or {}).items()}
    if should_stop is not None:
        def batch_done(trainer) -> None:
            # Not trainer.stop: a stopped trainer still validates on the whole dataset.
            if should_stop():
                raise Stopped

        callbacks.setdefault("on_train_batch_end", []).append(batch_done)
    try:
        return train_on_dataset(
            start, Path(data_dir or Path(run_dir) / "dataset"), config.budget.final_epochs,
            image_size or config.detector.image_size, out_dir,
            progress=progress, batch_size=config.final.batch_size, device="cpu" if device.type == "cpu" else "0",
            seed=seed, callbacks=callbacks,
            **{"val": False, "plots": False, "nbs": config.final.batch_size, **config.final.trainer_overrides},
        )
    except Stopped:
        return None
