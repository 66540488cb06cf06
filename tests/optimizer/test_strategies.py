"""The outer methods as strategies (optimizer.strategies): every method has one, each keeps
its own state in the checkpoint (a resumed run equals the uninterrupted one), and a setting the
job's method cannot use is said at set-up instead of being ignored quietly."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch

from detector.datasets import LabelledSet
from optimizer.checkpoint import load_checkpoint
from optimizer.config import Method, Progress
from optimizer.loop import run_loop
from optimizer.psi import PsiConfig
from optimizer.strategies import STRATEGIES
from tests.optimizer.scenes import faced_box_renderer, shifted_psi, target_set
from tests.optimizer.test_loop import CLASSES, tiny_config


def test_every_method_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(get_args(Method))


def _setup_message(config, tmp_path: Path, val_set: LabelledSet) -> str:
    reports: list[Progress] = []
    result = run_loop(config, faced_box_renderer(), CLASSES, val_set, None, tmp_path, on_progress=reports.append,
                      should_stop=lambda: True, progress_bar=False)
    assert result.status == "cancelled"
    return next(r.message for r in reports if r.stage == "setup")


def test_enumerate_bins_without_the_azimuth_learnt_is_said_at_set_up(tmp_path: Path) -> None:
    """Presets turn enumerate_bins on whatever the job learns; a job whose azimuth is not learnt
    by the score function has no bins to enumerate, and the set-up message says so."""
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    val_set = target_set(faced_box_renderer(), shifted_psi(config), 4, 32, tmp_path / "val", CLASSES, seed=1)
    settings = {"outer": {"enumerate_bins": True}, "budget": {"outer_iterations": 1},
                "detector": {"warmup_steps": 0, "sample_images": 0, "val_map_every": 0}}
    unused = _setup_message(tiny_config(settings, psi={"learnable": ["distance"]}), tmp_path / "distance", val_set)
    assert "enumerate_bins and alignment_objective 'mean' are unused: the azimuth is not learnt" in unused
    used = _setup_message(tiny_config(settings, psi={"learnable": ["azimuth"]}, budget={"images_per_iteration": 8}),
                          tmp_path / "azimuth", val_set)
    assert "unused" not in used


@pytest.mark.parametrize("method", ["random-search", "reinforce"])
def test_a_strategys_own_state_survives_a_resume(tmp_path: Path, method: str) -> None:
    """The incumbent (random search), the reward baseline and psi's optimiser (REINFORCE) are
    in the checkpoint: cancelled after one iteration and resumed, the run equals the whole one."""
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    val_set = target_set(faced_box_renderer(), shifted_psi(config), 4, 32, tmp_path / "val", CLASSES, seed=1)
    settings = tiny_config(outer={"method": method, "search_metric": "val_loss"},
                           budget={"outer_iterations": 3},
                           psi={"learnable": ["azimuth", "distance"]},
                           detector={"sample_images": 0, "val_map_every": 0})

    def run(folder: str, **kwargs):
        return run_loop(settings, faced_box_renderer(), CLASSES, val_set, None, tmp_path / folder, progress_bar=False,
                        **kwargs)

    whole = run("whole")
    asked = []
    assert run("split", should_stop=lambda: asked.append(True) or len(asked) == 2).iterations_done == 1
    resumed = run("split")
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]
    assert resumed.psi == whole.psi
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    if method == "random-search":
        assert a.best["iteration"] == b.best["iteration"] and a.psi_optimizer == {} and a.baseline is None
    else:
        assert a.baseline == b.baseline and a.baseline["value"] is not None and a.best is None
        for key, state in a.psi_optimizer["state"].items():
            assert all(torch.equal(v, b.psi_optimizer["state"][key][k]) for k, v in state.items())
