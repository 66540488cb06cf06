"""The SDK's JobSpec, the one job shape: typed sections with bounds, torch-free, built from a
dict or from record objects, dumped with only what was set."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from nerfsim_client import Asset, JobSpec, Preset, Target
from nerfsim_client.spec import job_spec

MINIMAL = {"scene": {"assets": ["asset-0123456789abcdef"]}, "targets": {"val": "target-0123456789abcdef"}}


def test_the_sdk_and_its_spec_import_without_torch() -> None:
    code = "import sys, nerfsim_client, nerfsim_client.spec; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_minimal_spec_dumps_the_defaults_it_carries_and_nothing_unset() -> None:
    body = JobSpec.model_validate(MINIMAL).model_dump(mode="json")
    assert body["scene"] == {"assets": ["asset-0123456789abcdef"], "backgrounds": [], "fov_deg": 40.0}
    assert body["budget"]["outer_iterations"] == 20 and body["psi"]["learnable"][0] == "azimuth"
    assert body["outer"] == {} and body["hypergradient"] == {} and body["final"] == {}
    assert "preset" not in body  # unset: the service's default preset


@pytest.mark.parametrize("change, where", [
    ({"budget": {"outer_iterations": "3"}}, ("budget", "outer_iterations")),   # no coercion
    ({"budget": {"warp": 1}}, ("budget", "warp")),                            # unknown field
    ({"outer": {"estimator": "lookahead"}}, ("outer", "estimator")),          # benchmark-only value
    ({"outer": {"lookahead_bin_share": 0.5}}, ("outer", "lookahead_bin_share")),  # benchmark-only field
    ({"detector": {"image_size": 48}}, ("detector", "image_size")),
    ({"final": {"trainer_overrides": {"project": "/tmp"}}}, ("final", "trainer_overrides", "project")),
    ({"psi": {"initial": {"num_classes": 3}}}, ("psi", "initial", "num_classes")),
    ({"scene": {"assets": []}}, ("scene", "assets")),
    ({"scene": {"fov_deg": float("inf")}}, ("scene", "fov_deg")),
    ({"seed": True}, ("seed",)),
    ({"method": "uniform"}, ("method",)),                                      # a section's field at the top
])
def test_bad_fields_are_refused_naming_them(change: dict, where: tuple) -> None:
    spec = {**MINIMAL, **{key: {**MINIMAL.get(key, {}), **value} if isinstance(value, dict) else value
                          for key, value in change.items()}}
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    assert where in [error["loc"][:len(where)] for error in caught.value.errors()], caught.value.errors()


def test_rules_that_need_no_loop_are_checked_in_the_sdk() -> None:
    with pytest.raises(ValidationError, match="elevation_range_deg: need lo <= hi"):
        JobSpec.model_validate({**MINIMAL, "psi": {"initial": {"elevation_range_deg": [50, 0]}}})
    with pytest.raises(ValidationError, match="psi.initial.plain_background false needs scene.backgrounds"):
        JobSpec.model_validate({**MINIMAL, "scene": {**MINIMAL["scene"], "procedural_backgrounds": 0},
                                "psi": {"initial": {"plain_background": False}}})
    with pytest.raises(ValidationError, match="background sets listed more than once"):
        JobSpec.model_validate({**MINIMAL, "scene": {**MINIMAL["scene"], "backgrounds": ["b", "b"]}})


def test_record_objects_stand_for_their_ids_and_the_preset_argument_wins() -> None:
    asset = Asset("asset-0123456789abcdef", "box", "nerfsim", "ready", None, {})
    target = Target("target-0123456789abcdef", "real", "both", "coco", 8, ["box"], {})
    preset = Preset("uniform", "", {})
    spec = job_spec({"preset": "neural-sim", "scene": {"assets": [asset]}, "targets": {"val": target, "test": target}},
                    preset=preset)
    assert spec.scene.assets == [asset.id] and spec.targets.test == target.id and spec.preset == "uniform"
    assert job_spec(spec) is spec  # a JobSpec goes as it is
