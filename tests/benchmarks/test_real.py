"""benchmarks/real.py renders its arms from the psi a loop run saved: the rebuilt psi must be the
one the loop learnt, or the 'optimised' arm would measure some other psi."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmarks.real import main, psi_from_run
from optimizer.checkpoint import load_checkpoint
from optimizer.config import BudgetConfig, DetectorSection, HypergradientConfig, OptimizeConfig, PsiSettings
from optimizer.loop import run_loop
from optimizer.psi import Psi, PsiConfig
from tests.optimizer.scenes import faced_box_renderer, shifted_psi, target_set


def test_psi_from_run_is_the_psi_the_loop_learnt(tmp_path: Path) -> None:
    psi = {"distance_median": 0.35, "elevation_median_deg": 20.0, "elevation_range_deg": [0.0, 50.0]}
    renderer = faced_box_renderer()
    target = shifted_psi(PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0)))
    val = target_set(renderer, target, 6, 32, tmp_path / "val", ["box"], seed=1)
    config = OptimizeConfig(
        preset="neural-sim", seed=3, device="cpu",
        psi=PsiSettings(learnable=["azimuth", "distance", "exposure"], initial=psi, learning_rate=0.2),
        budget=BudgetConfig(outer_iterations=2, images_per_iteration=6, inner_steps=2, final_images=0),
        detector=DetectorSection(warmup_steps=2, image_size=32, sample_images=0),
        hypergradient=HypergradientConfig(inverse_hessian_steps=2))
    result = run_loop(config, renderer, ["box"], val, None, tmp_path / "run", progress_bar=False)
    learnt = load_checkpoint(tmp_path / "run").psi

    rebuilt = psi_from_run(tmp_path / "run")
    snapshot = rebuilt.snapshot()
    assert snapshot["learnable"] == []  # fixed: the arms only draw from it
    assert {**snapshot, "learnable": result.psi["learnable"]} == result.psi
    state = rebuilt.state_dict()
    assert state.keys() == learnt.keys()
    for name, value in learnt.items():  # impossible bins are saved as -1e4 instead of -inf
        assert torch.allclose(state[name].double(), torch.nan_to_num(value.double(), neginf=-1e4)), name
    start = Psi(rebuilt.config).state_dict()
    assert any(not torch.equal(value, start[name]) for name, value in state.items()), "the loop moved psi"


def test_uniform_is_no_preset_arm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """'uniform' is always an arm: named in --presets it would be trained twice a seed, refused
    before any work with the option named."""
    monkeypatch.setattr(sys, "argv", ["real.py", "--presets", "appearance", "uniform"])
    with pytest.raises(SystemExit):
        main()
    assert "--presets: invalid choice: 'uniform'" in capsys.readouterr().err
