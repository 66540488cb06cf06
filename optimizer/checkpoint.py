"""The closed loop's checkpoint: everything an outer iteration leaves behind, written atomically.

One file, ``out_dir/checkpoint.pt``, rewritten after every outer iteration: the job config it
belongs to, the number of iterations done, psi (``state_dict``, which includes the temperature
schedule), psi's Adam state, the detector's weights and BatchNorm statistics, the inner
optimiser's state, the reward baseline, the mixture alignment's running sums and the appearance objective's sums, the random-search incumbent, the torch RNG state and
the history. It is written to a temporary file in the same folder and renamed over the old one,
so a crash leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizer.config import OptimizeConfig
from optimizer.psi import OptimizerError

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class LoopState:
    """What the loop carries from one outer iteration to the next (tensors on the CPU). The
    fields ``psi_optimizer``, ``baseline``, ``mixture``, ``appearance`` and ``best`` belong to the
    outer method (optimizer.strategies): each fills its own and leaves the others at their defaults."""

    config: dict[str, Any]
    """The job config (OptimizeConfig.to_dict()); a resume must use the same one."""
    iteration: int
    """Outer iterations completed."""
    psi: dict[str, torch.Tensor]
    detector: dict[str, torch.Tensor]
    """The loop detector's state_dict (warm-started for neural-sim and the fixed baselines; the
    reference that every candidate starts from for random search and REINFORCE)."""
    finetune: dict
    """detector.train.FinetuneState fields (optimizer state, steps done, losses)."""
    psi_optimizer: dict = field(default_factory=dict)
    """psi's Adam state (the methods that step psi by a gradient; empty for the others)."""
    baseline: dict | None = None
    """optimizer.estimators.MovingAverageBaseline fields (neural-sim and REINFORCE)."""
    mixture: dict | None = None
    """optimizer.estimators.MixtureStatistics fields (the 'mixture' alignment's running sums)."""
    appearance: dict | None = None
    """optimizer.appearance.AppearanceStatistics fields (the 'appearance' objective's sums; None
    for other objectives)."""
    best: dict | None = None
    """Random search: the incumbent ({"psi": state_dict, "score": val loss, "iteration": t})."""
    val_loss_start: float | None = None
    """Validation loss of the loop detector before the first outer iteration."""
    torch_rng: torch.Tensor | None = None
    """torch's global CPU RNG state (the loop draws from explicit generators; saved so that any
    library draw also replays identically)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per completed outer iteration."""


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def save_checkpoint(state: LoopState, out_dir: Path) -> Path:
    """Write ``state`` to ``out_dir/checkpoint.pt`` atomically (temporary file + rename)."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(vars(state), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(out_dir: Path) -> LoopState | None:
    """The checkpoint in ``out_dir``, or None when there is none."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    try:
        # Plain tensors, dicts, lists and numbers only: weights_only refuses anything else.
        data = torch.load(path, map_location="cpu", weights_only=True)
        return LoopState(**data)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise OptimizerError(f"{path}: not a readable nerfsim loop checkpoint ({error}); delete it to start over") from error


def set_aside_other_run(out_dir: Path, config: OptimizeConfig) -> list[str] | None:
    """For a folder that only ever holds one job's run (the service's job folders): when its
    checkpoint is of another config (the same job under an older nerfsim, whose config had other
    fields or defaults) or cannot be read, rename it to ``checkpoint.<n>.stale.pt`` so that the
    run starts over instead of failing: the job is kept, its progress is not. Returns the
    settings that differ (``["unreadable checkpoint"]``), or None when there is no checkpoint or
    it is of ``config``. Not for a folder a user names (``nerfsim optimize --out``): there a
    checkpoint of another config is an error that says so (optimizer.loop)."""
    try:
        saved = load_checkpoint(out_dir)
        differing = None if saved is None else config.differences(saved.config)
    except OptimizerError:
        differing = ["unreadable checkpoint"]
    if not differing:
        return None
    path = checkpoint_path(out_dir)
    number = 1
    while path.with_name(f"checkpoint.{number}.stale.pt").exists():
        number += 1
    os.replace(path, path.with_name(f"checkpoint.{number}.stale.pt"))
    return differing
