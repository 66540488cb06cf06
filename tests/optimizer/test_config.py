"""OptimizeConfig in sections: each section names its own bad field, from_dict reads the nested
JSON that to_dict writes and names what it does not know, and the warm-up's key comes from the
fields the sections declare the warm-up reads."""

from __future__ import annotations

import json
import sys

import pytest

from optimizer.config import (
    BudgetConfig,
    DetectorSection,
    FinalConfig,
    HypergradientConfig,
    OptimizeConfig,
    OuterConfig,
    PsiSettings,
    SceneConfig,
)
from optimizer.psi import OptimizerError


@pytest.mark.parametrize(("section", "message"), [
    (BudgetConfig(outer_iterations=-1), r"OptimizeConfig.budget.outer_iterations: must be >= 0, got -1"),
    (BudgetConfig(final_epochs=0), r"OptimizeConfig.budget.final_epochs: must be >= 1"),
    (OuterConfig(method="magic"), r"OptimizeConfig.outer.method: unknown value 'magic'"),
    (OuterConfig(baseline_decay=1.0), r"OptimizeConfig.outer.baseline_decay: must be in \[0, 1\)"),
    (OuterConfig(method="neural-sim", estimator="both", appearance_parts=["hue"]),
     r"OptimizeConfig.outer.appearance_parts: unknown parts \['hue'\]"),
    (HypergradientConfig(neumann_scale=0.0), r"OptimizeConfig.hypergradient.neumann_scale: must be > 0"),
    (HypergradientConfig(inverse_hessian="exact"), r"OptimizeConfig.hypergradient.inverse_hessian: unknown value"),
    (PsiSettings(learnable=["hue"]), r"OptimizeConfig.psi.learnable: unknown parts \['hue'\]"),
    (PsiSettings(entropy_weight=-1.0), r"OptimizeConfig.psi.entropy_weight: must be >= 0"),
    (DetectorSection(image_size=48), r"OptimizeConfig.detector.image_size: must be a positive multiple of 32"),
    (DetectorSection(inner_batch_size=0), r"OptimizeConfig.detector.inner_batch_size: must be >= 1 or None"),
    (FinalConfig(init="best"), r"OptimizeConfig.final.init: unknown value 'best'"),
    (FinalConfig(image_size=100), r"OptimizeConfig.final.image_size: must be a positive multiple of 32 or None"),
    (SceneConfig(photometric={"shot_noise": -1}), r"OptimizeConfig.scene.photometric: .*shot_noise"),
])
def test_each_section_names_its_bad_field(section, message: str) -> None:
    with pytest.raises(OptimizerError, match=message):
        section.validate()
    with pytest.raises(OptimizerError, match=message):  # and the whole config, through it
        OptimizeConfig(**{section.name: section}).validate()


def test_rules_across_sections_name_the_field_to_change() -> None:
    with pytest.raises(OptimizerError, match=r"final.init: 'warmup' .* needs detector.warmup_steps >= 1"):
        OptimizeConfig(final=FinalConfig(init="warmup"), detector=DetectorSection(warmup_steps=0)).validate()
    with pytest.raises(OptimizerError, match="OptimizeConfig.psi.oracle: method 'oracle' needs"):
        OptimizeConfig(preset="uniform", outer=OuterConfig(method="oracle")).validate()
    with pytest.raises(OptimizerError, match="OptimizeConfig.budget.images_per_iteration: enumerate_bins"):
        OptimizeConfig(budget=BudgetConfig(images_per_iteration=12), psi=PsiSettings(learnable=["azimuth"])).validate()
    with pytest.raises(OptimizerError, match="OptimizeConfig.device: unknown value 'tpu'"):
        OptimizeConfig(device="tpu").validate()


def test_from_dict_reads_what_to_dict_writes_and_fills_left_out_sections() -> None:
    config = OptimizeConfig.from_dict({"preset": "uniform", "budget": {"outer_iterations": 2},
                                       "final": {"real_share": 0.5}})
    assert config.budget == BudgetConfig(outer_iterations=2) and config.final.real_share == 0.5
    assert config.outer.method == "uniform" and config.scene == SceneConfig()  # the preset filled outer
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["budget"]["outer_iterations"] == 2 and saved["targets"] == {"val": None, "test": None}
    assert OptimizeConfig.from_dict(saved) == config and config.differences(saved) == []


@pytest.mark.parametrize(("data", "message"), [
    ({"budgets": {}}, r"unknown job settings \['budgets'\]"),
    ({"outer_iterations": 3}, r"unknown job settings \['outer_iterations'\]"),  # flat: from before the sections
    ({"budget": {"outer_iteration": 3}}, r"unknown job settings \['budget.outer_iteration'\]"),
    ({"psi": {"psi_priors": False}}, r"unknown job settings \['psi.psi_priors'\]"),
    ({"budget": 3}, "budget: a section is a JSON object"),
    ({"outer": {"lookahead_bin_share": 0.5}}, r"\['outer.lookahead_bin_share'\]: benchmark-only settings"),
    ({"outer": {"estimator": "lookahead"}}, "outer.estimator: 'lookahead' is a benchmark-only value"),
    ({"preset": "magic"}, "preset: unknown preset 'magic'"),
])
def test_from_dict_names_what_it_does_not_know(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizeConfig.from_dict(data)


def test_a_saved_config_reads_back_as_the_run_it_was() -> None:
    # A job's config saved under an older nerfsim: its own values stay (not today's defaults), a
    # setting it predates is what runs did before it (the field's "before", as a checkpoint
    # is compared), one since retired is dropped.
    saved = json.loads(json.dumps(OptimizeConfig.from_dict({"preset": "neural-sim", "seed": 3}).to_dict()))
    saved["final"]["real_share"] = 0.0
    del saved["hypergradient"]["hessian_product"]
    saved["outer"]["retired_setting"] = True
    config = OptimizeConfig.from_saved(saved)
    assert (config.preset, config.seed, config.outer.method, config.final.real_share) == ("neural-sim", 3, "neural-sim", 0.0)
    assert config.hypergradient.hessian_product == "double-backward" != HypergradientConfig().hessian_product
    del saved["outer"]["retired_setting"]
    assert config.differences(saved) == []
    assert OptimizeConfig.from_saved(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="from before the sections"):  # flat: its scene was a name
        OptimizeConfig.from_saved({"scene": "demo", "target_val": "val.json", "method": "neural-sim"})


def test_benchmarks_may_set_benchmark_only_fields() -> None:
    config = OptimizeConfig.from_dict({"outer": {"estimator": "lookahead", "lookahead_bin_share": 0.5}},
                                      benchmark=True)
    assert config.outer.estimator == "lookahead" and config.outer.lookahead_bin_share == 0.5


def test_a_section_shared_by_two_configs_is_not_filled_by_either_preset() -> None:
    outer = OuterConfig()
    uniform, paper = OptimizeConfig(preset="uniform", outer=outer), OptimizeConfig(preset="neural-sim", outer=outer)
    assert outer.method is None and (uniform.outer.method, paper.outer.method) == ("uniform", "neural-sim")


def test_the_warmup_key_holds_only_what_the_warmup_reads() -> None:
    base = OptimizeConfig().warmup_settings()
    after = OptimizeConfig(preset="uniform", budget=BudgetConfig(outer_iterations=1, final_images=0),
                           hypergradient=HypergradientConfig(damping=1.0), final=FinalConfig(image_size=320),
                           psi=PsiSettings(learning_rate=1.0, oracle={"distance_median": 0.3}),
                           detector=DetectorSection(val_map_every=0, sample_images=0))
    assert after.warmup_settings() == base
    for read in (OptimizeConfig(seed=1), OptimizeConfig(budget=BudgetConfig(inner_steps=3)),
                 OptimizeConfig(psi=PsiSettings(initial={"azimuth_bins": 4})),
                 OptimizeConfig(detector=DetectorSection(warmup_steps=5)), OptimizeConfig(scene=SceneConfig(spec="x"))):
        assert read.warmup_settings() != base


def test_the_config_module_imports_no_torch() -> None:
    """The API reads configs without the optimizer's torch (checked in a fresh interpreter)."""
    import subprocess

    code = "import sys, optimizer.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
