"""The one job shape at the service: a JobSpec becomes the loop's config by one function (scene
inline, references at their paths), job records stored in the old flat shape still load with
every setting they were sent, and a request's references must be record ids."""

from __future__ import annotations

import json

import pytest
from nerfsim_client.spec import JobSpec
from pydantic import ValidationError

from service.job_config import Resolved, loop_config
from service.job_schemas import JobCreate, JobRecord
from tests.service.jobs import TINY_JOB, tiny_job

FLAT_RECORD = {
    "id": "job-0123456789abcdef", "tenant": "acme", "status": "queued", "revision": 3,
    "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z",
    "assets": ["asset-0000000000000001", "asset-0000000000000002"], "target_val": "target-0000000000000001",
    "target_test": "target-0000000000000002", "preset": "neural-sim", "method": "neural-sim", "estimator": "both",
    "budget": {"outer_iterations": 3, "images_per_iteration": 8, "inner_steps": 2, "final_images": 16,
               "final_epochs": 2},
    "learnable": ["azimuth", "exposure"], "inverse_hessian": "neumann", "detector": "yolo11n", "image_size": 96,
    "seed": 7, "backgrounds": ["backgrounds-0000000000000001"], "procedural_backgrounds": 2, "fov_deg": 55.0,
    "psi": {"distance_median": 0.5, "retired_knob": 1}, "device": "cpu",
    "detector_weights": "weights-0000000000000001",
    "options": {"inverse_hessian_steps": 3, "damping": 0.5, "pose_group": 2, "enumerate_bins": False,
                "share_classes": True, "psi_priors": False, "psi_learning_rate": 0.1, "oracle_psi": {"exposure_mean": 1.0},
                "inner_batch_size": 4, "sample_images": 1, "final_batch_size": 4, "final_image_size": 64,
                "final_init": "warmup", "final_trainer_overrides": {"mosaic": 0.0}, "final_real_share": 0.25,
                "real_only_baseline": False, "uniform_baseline": False, "harvest_backgrounds": False,
                "resting_poses": False, "canonical_pose_share": 0.5, "several_objects": True, "photometric": False,
                "scene": "/etc/retired-server-path"},
    "attempts": 1, "history": [{"iteration": 0, "val_loss": 1.0}],
}
"""A job record as stored before the one job shape: flat fields and an ``options`` catch-all."""


def test_a_record_in_the_flat_shape_loads_with_every_setting_it_was_sent() -> None:
    record = JobRecord.model_validate_json(json.dumps(FLAT_RECORD))
    spec = record.spec
    assert spec.scene.assets == FLAT_RECORD["assets"] and spec.scene.backgrounds == FLAT_RECORD["backgrounds"]
    assert (spec.scene.procedural_backgrounds, spec.scene.fov_deg, spec.scene.photometric) == (2, 55.0, False)
    assert (spec.scene.harvest_backgrounds, spec.scene.resting_poses, spec.scene.canonical_pose_share,
            spec.scene.several_objects) == (False, False, 0.5, True)
    assert (spec.targets.val, spec.targets.test) == ("target-0000000000000001", "target-0000000000000002")
    assert spec.budget.model_dump() == FLAT_RECORD["budget"]
    assert (spec.outer.method, spec.outer.estimator, spec.outer.pose_group, spec.outer.enumerate_bins) == \
        ("neural-sim", "both", 2, False)
    assert (spec.hypergradient.inverse_hessian, spec.hypergradient.inverse_hessian_steps,
            spec.hypergradient.damping) == ("neumann", 3, 0.5)
    assert spec.psi.model_dump() == {"learnable": ["azimuth", "exposure"], "share_classes": True,
                                     "initial": {"distance_median": 0.5}, "priors": False,
                                     "oracle": {"exposure_mean": 1.0}, "learning_rate": 0.1}
    assert spec.detector.model_dump() == {"arch": "yolo11n", "weights": "weights-0000000000000001", "image_size": 96,
                                          "inner_batch_size": 4, "sample_images": 1}
    assert spec.final.model_dump() == {"image_size": 64, "batch_size": 4, "init": "warmup",
                                       "trainer_overrides": {"mosaic": 0.0}, "real_share": 0.25,
                                       "real_only_baseline": False, "uniform_baseline": False}
    assert (spec.preset, spec.seed, spec.device) == ("neural-sim", 7, "cpu")
    assert record.history == FLAT_RECORD["history"] and record.revision == 3
    # Saved again, it is in the new shape, and reads back the same.
    assert JobRecord.model_validate_json(record.model_dump_json()) == record
    # It runs with what it was sent.
    config = loop_config(spec, Resolved([("a", "/a"), ("b", "/b")], "/val", "/test", ["/photos"], "/w.pt"))
    assert (config.hypergradient.inverse_hessian, config.final.real_share, config.scene.photometric,
            config.detector.arch, config.scene.spec["fov_deg"], config.outer.pose_group) == \
        ("neumann", 0.25, None, "yolo11n", 55.0, 2)
    config.validate()


def test_a_record_from_before_presets_keeps_the_method_it_ran() -> None:
    old = {key: value for key, value in FLAT_RECORD.items() if key not in ("preset", "options")}
    spec = JobRecord.model_validate(old).spec
    assert spec.preset == "neural-sim" and spec.final.uniform_baseline is False


def test_a_spec_becomes_the_loops_config_with_its_scene_inline() -> None:
    spec = JobSpec.model_validate(tiny_job("asset-0000000000000001", "target-0000000000000001",
                                           scene={"fov_deg": 55.0, "photometric": False, "several_objects": True},
                                           final={"trainer_overrides": {"mosaic": 0.0}}))
    resolved = Resolved([("box", "/store/box")], "/store/val.json", None, ["/store/photos"], "/store/w.pt")
    config = loop_config(spec, resolved, name="job-1")
    assert config.scene.spec == {"name": "job-1", "fov_deg": 55.0, "objects": [{"name": "box", "path": "/store/box"}],
                                 "backgrounds": ["/store/photos"], "procedural_backgrounds": 1}
    assert config.scene.photometric is None and config.scene.several_objects
    assert (config.targets.val, config.targets.test, config.detector.weights) == ("/store/val.json", None, "/store/w.pt")
    assert config.budget.images_per_iteration == TINY_JOB["budget"]["images_per_iteration"]
    assert config.psi.initial == {"distance_median": 0.5} and config.final.trainer_overrides == {"mosaic": 0.0}
    assert config.final.batch_size == 4 and config.hypergradient.inverse_hessian_steps == 1
    default = loop_config(JobSpec.model_validate(tiny_job("a", "t")), resolved)
    assert default.scene.photometric == {} and default.psi.priors  # unset: the loop's defaults


@pytest.mark.parametrize("change, field", [
    ({"scene": {"assets": ["/srv/nerfsim-data/tenants/other/asset"]}}, "scene.assets"),
    ({"targets": {"val": "../target-0000000000000001"}}, "targets"),
    ({"targets": {"val": "target-0000000000000001", "test": "/etc/passwd"}}, "targets"),
    ({"scene": {"backgrounds": ["photos/"]}}, "scene.backgrounds"),
    ({"detector": {"weights": "/tmp/evil.pt"}}, "detector.weights"),
])
def test_a_request_names_records_by_id_never_by_path(change: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}: .* is not a record id"):
        JobCreate.model_validate(tiny_job("asset-0000000000000001", "target-0000000000000001", **change))


def test_the_defaults_a_spec_carries_are_the_loops() -> None:
    """The few defaults the JobSpec states (so that its schema shows them) are the loop's own."""
    from optimizer.config import OptimizeConfig

    spec = JobSpec.model_validate({"scene": {"assets": ["a"]}, "targets": {"val": "t"}})
    mine, loops = loop_config(spec, Resolved([("a", "a")], "t")), OptimizeConfig()
    assert mine.budget == loops.budget and mine.psi.learnable == loops.psi.learnable and mine.seed == loops.seed
    assert (mine.detector.arch, mine.detector.image_size, mine.device) == (loops.detector.arch, loops.detector.image_size,
                                                                         loops.device)


def test_the_specs_choices_are_the_loops_choices_less_the_benchmark_only_ones() -> None:
    """A value the loop takes but the SDK's JobSpec does not list could not be named by a job
    (and the reverse would fail at submission): the two lists are kept equal here."""
    from typing import get_args

    from nerfsim_client.spec import HypergradientSection, OuterSection

    from optimizer.config import RESEARCH_VALUES
    from optimizer.sections import (
        AlignmentNormalisation, AlignmentObjective, Estimator, HessianLayers, HessianProduct, InverseHessian, Method,
        SearchMetric,
    )

    def listed(section, name: str) -> set:
        return {value for option in get_args(section.model_fields[name].annotation) for value in get_args(option)}

    loop = {(OuterSection, "method"): Method, (OuterSection, "estimator"): Estimator,
            (OuterSection, "alignment_objective"): AlignmentObjective,
            (OuterSection, "alignment_normalisation"): AlignmentNormalisation,
            (OuterSection, "search_metric"): SearchMetric, (HypergradientSection, "inverse_hessian"): InverseHessian,
            (HypergradientSection, "hessian_layers"): HessianLayers,
            (HypergradientSection, "hessian_product"): HessianProduct}
    for (section, name), choices in loop.items():
        research = RESEARCH_VALUES.get(f"{section.__name__.removesuffix('Section').lower()}.{name}")
        assert listed(section, name) == set(get_args(choices)) - {research}, name
