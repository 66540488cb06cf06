"""The loop's best detector, kept beside the final one.

Each outer iteration that measures validation mAP50-95 (``val_map_every``) scores the detector
it trained: the loop's own detector, or a baseline's candidate copy (random search, REINFORCE).
The best of them is saved as ``best_loop_detector.pt``, an artifact a user can download: the
final detector trains afresh on the final psi's renders and can score lower than it.
The best score so far is read from the run's history (saved in every checkpoint), so nothing
new goes into the checkpoint: the file is written before the iteration's checkpoint, and a run
resumed after a crash between the two redoes the iteration and writes the same detector again.
"""

from __future__ import annotations

from pathlib import Path

from ultralytics.nn.tasks import DetectionModel

from detector.evaluate import DetectionMetrics
from detector.model import save_detector

BEST_LOOP_DETECTOR = "best_loop_detector.pt"
"""File name of the loop's best detector in the run's folder (and of the job's artifact)."""


def best_iteration(history: list[dict]) -> dict | None:
    """Which iteration's detector is kept: ``{"iteration", "val_map50_95", "file"}`` of the
    highest validation mAP50-95 in ``history`` (the earliest of equals); None before any
    iteration measured one."""
    scored = [record for record in history if record.get("val_map50_95") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda record: record["val_map50_95"])  # max keeps the first of equals
    return {"iteration": best["iteration"], "val_map50_95": best["val_map50_95"], "file": BEST_LOOP_DETECTOR}


def keep_if_best(model: DetectionModel, iteration: int, metrics: DetectionMetrics | None, history: list[dict],
                 out_dir: Path) -> bool:
    """Save ``model`` as ``out_dir/best_loop_detector.pt`` when this iteration's validation
    mAP50-95 beats every earlier iteration's in ``history``; returns whether it did."""
    if metrics is None:
        return False
    earlier = best_iteration([record for record in history if record["iteration"] < iteration])
    if earlier is not None and metrics.map50_95 <= earlier["val_map50_95"]:
        return False
    partial = Path(out_dir) / f"{BEST_LOOP_DETECTOR}.partial"  # a reader never sees half a file
    save_detector(model, partial).replace(Path(out_dir) / BEST_LOOP_DETECTOR)
    return True
