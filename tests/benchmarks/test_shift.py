"""The shift benchmark's per-part protocol: one shift per learnable part, each scored by a psi
distance that is 0 at its target and not at the initial psi, and the default preset's run as a
job naming no preset would make it."""

from __future__ import annotations

import pytest

from benchmarks.shift import BASE_PSI, FULL, PART_OF, QUICK, SHIFTS, last_line, psi_distance, run_config
from optimizer.presets import DEFAULT_PRESET, PRESET_FIELDS, PRESETS
from optimizer.psi import Psi, PsiConfig


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_each_shift_moves_one_part_and_its_distance_is_zero_at_the_target(shift: str) -> None:
    assert SHIFTS[shift]["learnable"] == [PART_OF[shift]]
    config = PsiConfig(num_classes=6, num_backgrounds=7, **{k: tuple(v) if isinstance(v, list) else v
                                                           for k, v in BASE_PSI.items()})
    assert psi_distance(shift, Psi.from_target(config, **SHIFTS[shift]["target"]).snapshot()) == pytest.approx(0, abs=1e-5)
    assert psi_distance(shift, Psi.uniform(config).snapshot()) > 0.1


def test_the_default_method_runs_the_default_preset_untouched() -> None:
    assert sorted(PART_OF.values()) == sorted(set(PART_OF.values()))  # one shift per part
    for shift in SHIFTS:
        config = run_config(shift, "default", 0, QUICK)
        config.validate()
        assert config.preset == DEFAULT_PRESET
        assert {name: getattr(config.outer, name) for name in PRESET_FIELDS} == PRESETS[DEFAULT_PRESET].to_dict()["settings"]
        assert not config.final.uniform_baseline  # the benchmark's own uniform arm
        assert run_config(shift, "uniform", 0, QUICK).budget.outer_iterations == 0
        # A third of the full run's iterations, three times its psi steps (but the pose shift's).
        assert config.psi.learning_rate == SHIFTS[shift]["psi_lr"] * (1 if shift == "pose" else 3)
        assert run_config(shift, "default", 0, FULL).psi.learning_rate == SHIFTS[shift]["psi_lr"]


def test_the_solved_arms_take_hessian_products_and_differ_in_their_product_only() -> None:
    for shift in SHIFTS:
        exact, approximate = (run_config(shift, method, 0, QUICK) for method in ("neural-sim-cg", "neural-sim-cg-fd"))
        exact.validate()
        assert exact.preset == "neural-sim" and exact.hypergradient.inverse_hessian == "cg"  # identity takes none
        assert approximate.differences(exact.to_dict()) == ["hypergradient.hessian_product"]
        assert (exact.hypergradient.hessian_product, approximate.hypergradient.hessian_product) == (
            "double-backward", "finite-difference")
        # The identity-solve runs keep the product they were saved with, whatever the default.
        assert run_config(shift, "uniform", 0, QUICK).hypergradient.hessian_product == "double-backward"


def test_the_last_line_names_every_part_and_the_worst() -> None:
    table = {"pose": {"default": {"gap_closed": 0.9, "psi_distance": {"mean": 0.05}}},
             "zoom": {"default": {"gap_closed": 0.6, "psi_distance": {"mean": 0.02}}}}
    assert last_line(table, "default") == ("default_gap_closed_min=0.600 gap_closed_azimuth=0.900 "
                                           "gap_closed_distance=0.600 psi_distance_azimuth=0.050 "
                                           "psi_distance_distance=0.020 no_gap=-")
    # A part whose oracle does not beat uniform by MIN_GAP has no gap: listed, left out of the minimum.
    table["zoom"]["default"]["gap_closed"] = None
    assert last_line(table, "default").startswith("default_gap_closed_min=0.900 gap_closed_azimuth=0.900 "
                                                  "gap_closed_distance=nan")
    assert last_line(table, "default").endswith("no_gap=distance")
    table["zoom"] = {}  # a part without its run: no minimum over the parts
    assert last_line(table, "default").startswith("default_gap_closed_min=nan gap_closed_azimuth=0.900 "
                                                  "gap_closed_distance=nan")
