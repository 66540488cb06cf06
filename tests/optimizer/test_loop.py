"""The closed loop at toy scale: resume equals an uninterrupted run, cancellation, every baseline
through the same path, bad configs, divergence, and psi moving toward a target."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detector.datasets import LabelledSet
from detector.model import DetectorConfig, build_detector, load_detector
from optimizer.checkpoint import load_checkpoint, set_aside_other_run
from optimizer.config import OptimizeConfig, Progress, merged
from optimizer.divergence import TrainingDivergedError
from optimizer.loop import run_loop, run_optimization
from optimizer.psi import OptimizerError, Psi, PsiConfig
from renderer.resting import RestingConfig, field_pose_table
from renderer.scene_renderer import SceneRenderer
from tests.optimizer.scenes import SHIFTED_AZIMUTH, FacedBoxField, faced_box_renderer, shifted_psi, target_set

PSI = {"distance_median": 0.35, "elevation_median_deg": 20.0, "elevation_range_deg": [0.0, 50.0]}
CLASSES = ["box"]


TINY = {
    "preset": "neural-sim", "seed": 3,
    "outer": {"method": "neural-sim", "estimator": "both"},
    "psi": {"learnable": ["azimuth", "distance"], "initial": PSI, "learning_rate": 0.2,
            "oracle": {"azimuth_bin_probs": SHIFTED_AZIMUTH}},
    "budget": {"outer_iterations": 3, "images_per_iteration": 6, "inner_steps": 2, "final_images": 0},
    "hypergradient": {"inverse_hessian": "cg", "inverse_hessian_steps": 2},
    "detector": {"arch": "yolov8n-cpu", "image_size": 32, "warmup_steps": 2, "val_map_every": 1, "sample_images": 1},
}


def tiny_config(*changes: dict, **sections) -> OptimizeConfig:
    """Seconds per outer iteration: 32 px, 6 images, 2 inner steps, with ``changes`` and then
    ``sections`` (nested settings) on top. The paper's preset: these tests measure its
    mechanics (the presets' own tests: tests/optimizer/test_presets.py)."""
    return OptimizeConfig.from_dict(merged(TINY, *changes, sections), benchmark=True)


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> LabelledSet:
    config = PsiConfig(distance_median=0.35, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    folder = tmp_path_factory.mktemp("val")
    return target_set(faced_box_renderer(), shifted_psi(config), 6, 32, folder, CLASSES, seed=1)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list:
    """(iteration, images) of every detector fine-tuning round of the loop, in order."""
    from optimizer import loop as loop_module

    rounds = []
    original = loop_module._Loop.train

    def recording_train(self, model, batch, steps, state, iteration):
        rounds.append((iteration, batch.images.clone()))
        return original(self, model, batch, steps, state, iteration)

    monkeypatch.setattr(loop_module._Loop, "train", recording_train)
    return rounds


def _run(config: OptimizeConfig, val_set: LabelledSet, out_dir: Path, poses: bool = False, **kwargs):
    renderer = faced_box_renderer()
    if poses:  # objects resting on a support plane in several poses, with contact shadows (renderer.resting)
        lying = RestingConfig(canonical_pose_share=0.5)
        renderer = SceneRenderer(renderer.config, renderer.fields, renderer.backgrounds,
                                 [field_pose_table(f, lying) for f in renderer.fields])
    return run_loop(config, renderer, CLASSES, val_set, None, out_dir, progress_bar=False, **kwargs)


@pytest.mark.parametrize("poses", [False, True])
def test_resume_after_cancellation_equals_the_uninterrupted_run(tmp_path: Path, val_set: LabelledSet, poses: bool) -> None:
    config = tiny_config(psi={"learnable": ["azimuth", "distance", "pose"]}) if poses else tiny_config()
    whole = _run(config, val_set, poses=poses, out_dir=tmp_path / "whole")
    assert whole.status == "completed" and whole.iterations_done == 3

    asked = []

    def stop_before_the_second_iteration() -> bool:
        asked.append(True)
        return len(asked) == 2

    reports: list[Progress] = []
    first = _run(config, val_set, poses=poses, out_dir=tmp_path / "split", should_stop=stop_before_the_second_iteration,
                 on_progress=reports.append)
    assert first.status == "cancelled" and first.iterations_done == 1
    assert [r.stage for r in reports] == ["setup", "outer", "outer"] and reports[-1].message == "cancelled"
    assert load_checkpoint(tmp_path / "split").iteration == 1
    resumed = _run(config, val_set, poses=poses, out_dir=tmp_path / "split")
    assert resumed.status == "completed" and resumed.iterations_done == 3

    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    for name in a.psi:
        assert torch.equal(a.psi[name], b.psi[name]), name
    for name in a.detector:
        assert torch.equal(a.detector[name], b.detector[name]), name
    assert a.psi_optimizer["state"].keys() == b.psi_optimizer["state"].keys()
    for key, state in a.psi_optimizer["state"].items():
        assert all(torch.equal(v, b.psi_optimizer["state"][key][k]) for k, v in state.items())
    assert [r["val_loss"] for r in whole.history] == [r["val_loss"] for r in resumed.history]
    assert whole.images_rendered == resumed.images_rendered == 6 * (1 + 3)  # warm-up round + 3 iterations
    # psi did move (the comparison above is not between two untouched initial states).
    assert not torch.equal(a.psi["azimuth_logits"], torch.zeros_like(a.psi["azimuth_logits"]))
    assert not torch.equal(a.psi["distance_loc"], torch.full_like(a.psi["distance_loc"], math.log(0.35)))
    if poses:  # the pose part learned (score function) and was restored exactly
        initial = Psi(PsiConfig(pose_probs=(tuple(field_pose_table(faced_box_renderer().fields[0]).choice_probs()),)))
        assert not torch.equal(a.psi["pose_logits"], initial.pose_logits)
    # Samples with boxes were written and the report of the last iteration carries them.
    assert (tmp_path / "whole" / "samples" / "iter0002_0.png").is_file()

    with pytest.raises(OptimizerError, match="another config"):
        _run(replace(config, seed=4), val_set, tmp_path / "whole", poses=poses)
    # The refused run left the folder's record of its config alone.
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["seed"] == config.seed


def test_cancel_before_the_first_iteration_keeps_a_checkpoint(tmp_path: Path, val_set: LabelledSet) -> None:
    result = _run(tiny_config(detector={"warmup_steps": 0}), val_set, tmp_path, should_stop=lambda: True)
    assert result.status == "cancelled" and result.iterations_done == 0 and result.history == []
    assert load_checkpoint(tmp_path).iteration == 0


def test_a_service_job_folder_sets_aside_a_checkpoint_of_another_config(tmp_path: Path, val_set: LabelledSet) -> None:
    """What the worker does before a run (service.tasks): the same config keeps its checkpoint;
    a checkpoint of another config (the job under an older nerfsim) or an unreadable one is
    renamed aside, and the run then starts over instead of failing."""
    old = tiny_config(detector={"warmup_steps": 0})
    _run(old, val_set, tmp_path, should_stop=lambda: True)
    assert set_aside_other_run(tmp_path, old) is None and load_checkpoint(tmp_path) is not None
    new = replace(old, hypergradient=replace(old.hypergradient, hessian_product="double-backward"))
    assert set_aside_other_run(tmp_path, new) == ["hypergradient.hessian_product"]
    assert load_checkpoint(tmp_path) is None and (tmp_path / "checkpoint.1.stale.pt").is_file()
    assert _run(new, val_set, tmp_path, should_stop=lambda: True).status == "cancelled"
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert set_aside_other_run(tmp_path, new) == ["unreadable checkpoint"]
    assert (tmp_path / "checkpoint.2.stale.pt").read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize("method", ["uniform", "oracle", "random-search", "reinforce"])
def test_each_baseline_runs_through_the_loop(tmp_path: Path, val_set: LabelledSet, method: str) -> None:
    config = tiny_config(outer={"method": method, "search_metric": "val_loss"},
                         budget={"outer_iterations": 2},
                         psi={"learnable": ["azimuth"]},
                         detector={"sample_images": 0, "val_map_every": 0})
    reports: list[Progress] = []
    result = _run(config, val_set, tmp_path, on_progress=reports.append)
    assert result.status == "completed" and len(result.history) == 2
    assert [r.stage for r in reports if r.stage == "outer"] == ["outer", "outer"]
    probs = torch.tensor(result.psi["azimuth"]["probs"][0])
    uniform = torch.full((8,), 1 / 8)
    if method == "uniform":
        torch.testing.assert_close(probs, uniform)
    elif method == "oracle":
        torch.testing.assert_close(probs, torch.tensor(SHIFTED_AZIMUTH, dtype=torch.float32) / 2)
        assert result.history[-1]["azimuth_tv"] == pytest.approx(0.0, abs=1e-6)
    elif method == "random-search":
        scores = [r["candidate_score"] for r in result.history]
        best = max(range(2), key=lambda t: scores[t])
        assert result.history[-1]["best_candidate"] == best
        assert torch.allclose(probs, uniform) == (best == 0)  # candidate 0 is the initial psi
    else:
        assert result.history[1]["reward"] != result.history[1]["reward_baseline"]
        assert not torch.allclose(probs, uniform)


def test_bad_configs_are_refused(tmp_path: Path, val_set: LabelledSet) -> None:
    cases = {
        "unknown parts": tiny_config(psi={"learnable": ["azimuth", "hue"]}),
        "unknown value 'magic'": tiny_config(outer={"method": "magic"}),
        "needs the target's distribution": tiny_config(outer={"method": "oracle"}, psi={"oracle": None}),
        "gives no gradient to the learnable parts": tiny_config(outer={"estimator": "pathwise"},
                                                                psi={"learnable": ["class_mix"]}),
        r"no gradient to the learnable parts \['appearance'\]": tiny_config(outer={"estimator": "pathwise"},
                                                                            psi={"learnable": ["appearance"]}),
        "multiple of 32": tiny_config(detector={"image_size": 48}),
        "no part is learnable": tiny_config(psi={"learnable": []}),
        "must be > 0": tiny_config(psi={"learning_rate": 0.0}),
        r"OptimizeConfig.outer.pose_group: must be >= 1, got 0": tiny_config(outer={"pose_group": 0}),
        "set by the loop": tiny_config(psi={"initial": {"learn_azimuth": False}}),
        "unknown PsiConfig fields": tiny_config(psi={"initial": {"bins": 4}}),
    }
    for message, config in cases.items():
        with pytest.raises(OptimizerError, match=message):
            _run(config, val_set, tmp_path / "bad")
    with pytest.raises(OptimizerError, match="needs a labelled validation set"):
        run_optimization(tiny_config(targets={"val": None}), tmp_path / "bad", progress_bar=False)
    renamed = LabelledSet(val_set.images, ["mug"], val_set.source)
    with pytest.raises(OptimizerError, match=r"classes \['mug'\] that the scene lacks"):
        _run(tiny_config(), renamed, tmp_path / "bad")
    with pytest.raises(ValueError, match="unknown job settings"):
        OptimizeConfig.from_dict({"outer_iteration": 3})


class _NaNField(FacedBoxField):
    def forward(self, positions, directions=None, appearance=None):
        density, rgb = super().forward(positions, directions, appearance)
        return density, rgb * torch.nan


def test_non_finite_values_stop_the_run_with_a_clear_error(tmp_path: Path, val_set: LabelledSet) -> None:
    renderer = faced_box_renderer()
    renderer.fields[0] = _NaNField((0.05, 0.03, 0.02))
    with pytest.raises(TrainingDivergedError, match="rendered image is not finite"):
        run_loop(tiny_config(), renderer, CLASSES, val_set, None, tmp_path / "nan_images", progress_bar=False)
    with pytest.raises(TrainingDivergedError, match="training loss at inner step"):
        _run(tiny_config(detector={"inner_learning_rate": 1e30, "warmup_steps": 0}), val_set, tmp_path / "nan_loss")


@pytest.mark.slow
def test_the_loop_moves_psi_toward_the_target(tmp_path: Path) -> None:
    """Target: close-ups (median distance 0.22 m) of the faced box; psi starts at 0.45 m.
    The detector is warmed up first: the hypergradient of an untrained one says little."""
    initial = {"distance_median": 0.45, "elevation_median_deg": 20.0, "elevation_range_deg": [0.0, 50.0]}
    psi_cfg = PsiConfig(distance_median=0.45, elevation_median_deg=20.0, elevation_range_deg=(0.0, 50.0))
    renderer = faced_box_renderer()
    val = target_set(renderer, Psi.from_target(psi_cfg, distance_median=0.22), 32, 64, tmp_path / "val", CLASSES, seed=1)
    config = tiny_config(outer={"estimator": "score"},
                         psi={"learnable": ["distance"], "initial": initial, "learning_rate": 0.05, "oracle": None},
                         budget={"outer_iterations": 6, "images_per_iteration": 24, "inner_steps": 5},
                         detector={"warmup_steps": 60, "image_size": 64, "inner_learning_rate": 0.002,
                                   "val_map_every": 0, "sample_images": 0},
                         hypergradient={"inverse_hessian": "identity"})
    result = run_loop(config, renderer, CLASSES, val, None, tmp_path / "run", progress_bar=False)
    medians = [r["psi"]["distance_m"]["median"][0] for r in result.history]
    assert medians[-1] < 0.9 * 0.45, medians  # at least a tenth of the way in distance ...
    assert sum(b < a for a, b in zip(medians, medians[1:])) >= 4, medians  # ... and steadily


def test_run_optimization_from_files_writes_the_report(tmp_path: Path, val_set: LabelledSet) -> None:
    from dataclasses import asdict

    from renderer.object_field import ObjectAssetMeta, ObjectField, ObjectFieldConfig
    from renderer.train_object import save_object_asset

    # An untrained but opaque field (a high density bias fills its box): a visible object.
    model = ObjectFieldConfig(plane_resolutions=(8,), plane_components=4, hidden_dim=16, occupancy_resolution=8,
                              density_bias=6.0)
    aabb = torch.tensor([[-0.05, -0.03, -0.02], [0.05, 0.03, 0.02]])
    save_object_asset(ObjectField(model, aabb), ObjectAssetMeta("box", aabb.tolist(), asdict(model)), tmp_path / "box")
    (tmp_path / "scene.json").write_text(json.dumps({"name": "t", "objects": [{"name": "box", "path": "box"}]}))
    config = tiny_config(scene={"spec": str(tmp_path / "scene.json")},
                         targets={"val": str(val_set.source), "test": str(val_set.source)},
                         budget={"outer_iterations": 1, "final_images": 8, "final_epochs": 1},
                         final={"batch_size": 8},
                         detector={"warmup_steps": 0})
    reports: list[Progress] = []
    result = run_optimization(config, tmp_path / "out", on_progress=reports.append, progress_bar=False)
    assert result.status == "completed"
    stages = [r.stage for r in reports]
    assert stages[0] == "setup" and stages[-1] == "done"
    assert {"outer", "final-render", "final-train", "evaluate", "report"} <= set(stages)
    # One report per epoch (Ultralytics' validation of the best weights is not an epoch).
    assert [(r.iteration, r.total, r.message) for r in reports if r.stage == "final-train"] == [
        (1, 1, "final detector: epoch 1/1")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["final"]) == {"val", "test"} and 0 <= report["final"]["test"]["map50_95"] <= 1
    assert report["images_rendered"] == 6 + 8 + 8 and report["iterations_done"] == 1  # + the uniform baseline's
    assert json.loads((tmp_path / "out" / "psi.json").read_text())["snapshot"]["azimuth"]["probs"]
    # The learned parts at the start and at the end, and the uniform baseline beside the final detector.
    assert set(report["psi_before_after"]) == {"azimuth", "distance"}
    assert report["psi_before_after"]["azimuth"]["after"] == report["psi"]["azimuth"]
    assert report["baseline"]["evaluated_on"] == "test set" and "map50_95_bootstrap" in report["difference"]
    for name in ("detector.pt", "dataset/annotations.json", "plots/psi_azimuth.png", "plots/val_loss.png", "plots/map.png",
                 "plots/psi_before_after.png"):
        assert (tmp_path / "out" / name).is_file(), name
    # A finished run in the same folder is not redone.
    again = run_optimization(config, tmp_path / "out", progress_bar=False)
    assert again.metrics == result.metrics and again.history == result.history


def test_shared_classes_learn_one_distribution(tmp_path: Path, val_set: LabelledSet) -> None:
    from renderer.scene_renderer import SceneRenderer, SceneRendererConfig

    renderer = SceneRenderer(SceneRendererConfig(samples_per_ray=24),
                             [FacedBoxField((0.05, 0.03, 0.02)), FacedBoxField((0.03, 0.03, 0.03))])
    config = tiny_config(psi={"share_classes": True},
                         outer={"estimator": "score"},
                         budget={"outer_iterations": 2},
                         detector={"sample_images": 0, "val_map_every": 0})
    result = run_loop(config, renderer, ["box", "cube"], val_set, None, tmp_path, progress_bar=False)
    probs = torch.tensor(result.psi["azimuth"]["probs"])
    assert not torch.allclose(probs[0], torch.full((8,), 1 / 8))
    assert torch.equal(probs[0], probs[1])
    assert result.psi["distance_m"]["median"][0] == result.psi["distance_m"]["median"][1]


def test_should_stop_is_honoured_inside_the_final_training(tmp_path: Path, val_set: LabelledSet) -> None:
    """Asked after every batch of Ultralytics' training, not only after an epoch (and its
    validation on the whole dataset): the run stops at the first batch, keeps its dataset and
    resumes to completion."""
    config = tiny_config(budget={"outer_iterations": 1, "final_images": 8, "final_epochs": 2},
                         final={"batch_size": 2},
                         detector={"warmup_steps": 0, "sample_images": 0, "val_map_every": 0})
    out = tmp_path / "run"
    reports: list[Progress] = []
    # True once the final training has begun (it first saves the detector it starts from).
    stopped = _run(config, val_set, out, on_progress=reports.append,
                   should_stop=lambda: (out / "final_train" / "initial.pt").is_file())
    assert stopped.status == "cancelled" and stopped.iterations_done == 1
    assert "final-train" not in {r.stage for r in reports} and (out / "dataset" / "data.yaml").is_file()
    assert not list((out / "final_train").rglob("last.pt"))
    assert _run(config, val_set, out).status == "completed"


def test_the_final_dataset_draws_do_not_depend_on_the_method(tmp_path: Path, val_set: LabelledSet) -> None:
    """Common random numbers: one seed's runs draw the same final scenes from the same psi, so
    a uniform baseline (no outer iteration) and a loop that kept psi fixed render the same
    final dataset, and methods differ only where their psi differ."""
    final = {"budget": {"final_images": 4, "final_epochs": 1}, "final": {"batch_size": 4},
             "detector": {"sample_images": 0, "val_map_every": 0}}
    datasets = []
    for name, iterations in (("none", 0), ("two", 2)):
        _run(tiny_config(final, outer={"method": "uniform"}, budget={"outer_iterations": iterations}),
             val_set, tmp_path / name)
        dataset = tmp_path / name / "dataset"
        datasets.append(sorted((p.relative_to(dataset).as_posix(), p.read_bytes()) for p in dataset.rglob("*.png")))
    assert datasets[0] and datasets[0] == datasets[1]


def test_psi_steps_warm_up_over_the_first_iterations(tmp_path: Path, val_set: LabelledSet) -> None:
    """Adam's first update moves each bin logit by a full step whatever the gradient's size;
    psi.warmup_iterations=2 makes that first step a third of psi.learning_rate."""
    first_steps = {}
    for warmup in (0, 2):
        config = tiny_config(psi={"learnable": ["azimuth"], "warmup_iterations": warmup},
                             outer={"estimator": "score"},
                             budget={"outer_iterations": 1},
                             detector={"sample_images": 0, "val_map_every": 0})
        _run(config, val_set, tmp_path / f"warmup{warmup}")
        logits = load_checkpoint(tmp_path / f"warmup{warmup}").psi["azimuth_logits"]
        first_steps[warmup] = float(logits.abs().max())  # from all zeros (uniform)
    assert first_steps[0] == pytest.approx(0.2, rel=0.05)
    assert first_steps[2] == pytest.approx(0.2 / 3, rel=0.05)


def test_a_saved_config_that_predates_a_setting_means_its_default() -> None:
    saved = json.loads(json.dumps(tiny_config().to_dict()))
    del saved["psi"]["warmup_iterations"]
    assert tiny_config().differences(saved) == []
    assert tiny_config(psi={"warmup_iterations": 2}).differences(saved) == ["psi.warmup_iterations"]
    changed = {**saved, "budget": {**saved["budget"], "inner_steps": 7}}
    assert tiny_config(seed=4).differences(changed) == ["budget.inner_steps", "seed"]
    # A config saved before the sections (flat) is another config: the run starts again.
    flat = {"preset": "neural-sim", "seed": 3, "outer_iterations": 3, "images_per_iteration": 6}
    assert {"outer_iterations", "budget.outer_iterations"} <= set(tiny_config().differences(flat))


def test_the_lookahead_estimator_scores_every_bin_and_trains_on_psi(tmp_path: Path, val_set: LabelledSet) -> None:
    """Each iteration renders every scene at all 8 bins, scores a detector copy per bin, steps
    psi by the exact expectation over the bins, and trains the loop detector on images drawn
    in proportion to psi's bin probabilities."""
    config = tiny_config(outer={"estimator": "lookahead", "search_metric": "val_loss"},
                         psi={"learnable": ["azimuth"]},
                         budget={"images_per_iteration": 16, "outer_iterations": 2},
                         detector={"sample_images": 0, "val_map_every": 0})
    result = _run(config, val_set, tmp_path)
    assert result.images_rendered == 16 * (1 + 2)
    first = result.history[0]
    scores = torch.tensor(first["score_by_azimuth_bin"])
    assert scores.shape == (8,) and len(set(scores.tolist())) > 1  # the bins' copies differ
    # psi's first (Adam) step raised exactly the bins that scored above the mean.
    logits = torch.tensor(first["psi"]["azimuth"]["probs"][0]).log()
    above = scores > scores.mean()
    assert logits[above].min() > logits[~above].max()

    for bad, message in (
        (tiny_config(outer={"estimator": "lookahead"},
                     psi={"learnable": ["azimuth", "distance"]}), "learns the azimuth bins only"),
        (tiny_config(outer={"estimator": "lookahead"},
                     psi={"learnable": ["azimuth"]},
                     budget={"images_per_iteration": 12}), "a multiple of 8"),
    ):
        with pytest.raises(OptimizerError, match=message):
            _run(bad, val_set, tmp_path / "bad")


def test_enumerate_bins_scores_every_scene_at_every_bin_and_trains_on_psi(
    tmp_path: Path, val_set: LabelledSet, trained: list
) -> None:
    """enumerate_bins: every scene rendered at all 8 bins, the bins' gradient the exact
    expectation of their mean per-image rewards (so psi's first Adam step raises exactly the
    bins whose mean reward is above the mean), and the loop detector trained on as many images
    drawn in proportion to psi."""
    config = tiny_config(psi={"learnable": ["azimuth"]},
                         outer={"enumerate_bins": True, "alignment_normalisation": "cosine"},
                         budget={"images_per_iteration": 16, "outer_iterations": 1},
                         detector={"sample_images": 0, "val_map_every": 0})
    result = _run(config, val_set, tmp_path)
    assert result.images_rendered == 16 * (1 + 1)
    rewards = torch.tensor(result.history[0]["reward_by_azimuth_bin"])
    assert rewards.shape == (8,) and len(set(rewards.tolist())) == 8  # every bin measured, none alike
    logits = torch.tensor(result.history[0]["psi"]["azimuth"]["probs"][0]).log()
    above = rewards > rewards.mean()
    assert logits[above].min() > logits[~above].max()
    loop_round = [images for iteration, images in trained if iteration == 0]
    assert len(loop_round) == 1 and len(loop_round[0]) == 16
    # Resampled rows: some of the 16 every-bin images twice (psi is no longer uniform after the
    # step, and 16 draws with replacement from 16 rows repeat one with probability > 0.99).
    assert len({image.sum().item() for image in loop_round[0]}) < 16

    with pytest.raises(OptimizerError, match="enumerate_bins .* a multiple of 8"):
        _run(tiny_config(outer={"enumerate_bins": True},
                         budget={"images_per_iteration": 12}), val_set, tmp_path / "bad")
    # Presets set it whatever the job learns: without the azimuth learnt by the score function
    # it does nothing (any number of images, no rendering at every bin).
    for settings in ({"outer": {"estimator": "pathwise"}, "psi": {"learnable": ["azimuth"]}},
                     {"psi": {"learnable": ["distance"]}}):
        trained.clear()
        _run(tiny_config(settings, outer={"enumerate_bins": True}, budget={"outer_iterations": 1},
                         detector={"sample_images": 0, "val_map_every": 0}),
             val_set, tmp_path / "noop" / settings["psi"]["learnable"][0])
        assert [len(images) for iteration, images in trained if iteration == 0] == [6]


def test_the_mixture_alignment_objective_steps_psi_from_the_same_rewards_another_way(
    tmp_path: Path, val_set: LabelledSet
) -> None:
    """alignment_objective='mixture': the same draws and per-image cosines as 'mean' (so the same
    mean reward per bin), a step of psi of its own (the overlaps between scenes enter it), and its
    objective recorded; it fails without enumerate_bins or cosine rewards, naming the setting."""
    # 4 scenes: with 2 this tiny detector's two scenes' gradients point apart (no positive
    # estimate of |m|^2: the mean cosine's fallback, unit-tested in test_estimators).
    settings = {"psi": {"learnable": ["azimuth"]}, "outer": {"enumerate_bins": True, "alignment_normalisation": "cosine"},
                "budget": {"images_per_iteration": 32, "outer_iterations": 1},
                "detector": {"sample_images": 0, "val_map_every": 0}}
    mean = _run(tiny_config(settings), val_set, tmp_path / "mean").history[0]
    config = tiny_config(settings, outer={"alignment_objective": "mixture"}, budget={"outer_iterations": 2})
    whole = _run(config, val_set, tmp_path / "mixture")
    mixture = whole.history[0]
    torch.testing.assert_close(torch.tensor(mixture["reward_by_azimuth_bin"]), torch.tensor(mean["reward_by_azimuth_bin"]),
                               rtol=1e-4, atol=1e-6)
    assert -1 <= mixture["mixture_cosine"] <= 1 and mixture["mixture_norm"] > 0 and not mixture["mixture_fallback"]
    assert "mixture_cosine" not in mean
    assert mixture["psi"]["azimuth"]["probs"] != mean["psi"]["azimuth"]["probs"]
    # Its running sums are checkpointed: a run stopped after one iteration and resumed ends
    # where the uninterrupted one does.
    asked = []
    stopped = _run(config, val_set, tmp_path / "split", should_stop=lambda: asked.append(True) or len(asked) == 2)
    assert stopped.iterations_done == 1 and load_checkpoint(tmp_path / "split").mixture["scenes"] == 4
    resumed = _run(config, val_set, tmp_path / "split")
    assert [r["mixture_cosine"] for r in resumed.history] == [r["mixture_cosine"] for r in whole.history]
    assert resumed.history[-1]["psi"] == whole.history[-1]["psi"]

    for bad, message in (
        (tiny_config(outer={"alignment_objective": "mixture", "alignment_normalisation": "cosine"}),
         "alignment_objective: 'mixture' .* needs enumerate_bins"),
        (tiny_config(outer={"alignment_objective": "mixture", "enumerate_bins": True},
                     psi={"learnable": ["azimuth"]},
                     budget={"images_per_iteration": 16}),
         "alignment_objective: .* alignment_normalisation 'cosine', got enumerate_bins=True and 'standardise'"),
        (tiny_config(outer={"alignment_objective": "sum"}), "alignment_objective"),
    ):
        with pytest.raises(OptimizerError, match=message):
            _run(bad, val_set, tmp_path / "bad")


def test_the_appearance_objective_moves_the_bins_toward_the_validation_objects_without_detector_gradients(
    tmp_path: Path, val_set: LabelledSet
) -> None:
    """alignment_objective='appearance': the bins descend the crops' MMD to the validation
    objects (the faced box's target bins 1-2, SHIFTED_AZIMUTH), psi gets closer to the target,
    no per-image alignment is computed; the crops are checkpointed (resume equals the
    uninterrupted run). With the distance learnable too, the distance follows the MMD of the
    boxes' sizes when it is one of appearance_parts (still no alignment), else the detector's
    hypergradient (the default preset's way). Without enumerate_bins it fails, naming the setting."""
    config = tiny_config(psi={"learnable": ["azimuth"], "learning_rate": 0.3},
                         outer={"enumerate_bins": True, "alignment_objective": "appearance",
                                "appearance_parts": ["azimuth", "distance"]},
                         budget={"images_per_iteration": 16, "outer_iterations": 4},
                         detector={"sample_images": 0, "val_map_every": 0})
    whole = _run(config, val_set, tmp_path / "whole")
    first, last = whole.history[0], whole.history[-1]
    assert first["appearance_classes"] == 1 and "alignment_mean" not in first
    assert last["azimuth_tv"] < first["azimuth_tv"] - 0.1, [r["azimuth_tv"] for r in whole.history]
    asked = []
    stopped = _run(config, val_set, tmp_path / "split", should_stop=lambda: asked.append(True) or len(asked) == 3)
    assert stopped.iterations_done == 2 and load_checkpoint(tmp_path / "split").appearance["crops"].shape[0] == 32
    resumed = _run(config, val_set, tmp_path / "split")
    assert resumed.history[-1]["psi"] == whole.history[-1]["psi"]
    with_distance = replace(config, psi=replace(config.psi, learnable=["azimuth", "distance"]),
                            budget=replace(config.budget, outer_iterations=1))
    by_look = _run(with_distance, val_set, tmp_path / "distance").history[0]
    assert "alignment_mean" not in by_look and "appearance_mmd_size" in by_look
    assert by_look["appearance_mmd"] == first["appearance_mmd"]
    bins_only = replace(with_distance, outer=replace(with_distance.outer, appearance_parts=["azimuth"]))
    by_detector = _run(bins_only, val_set, tmp_path / "bins_only").history[0]
    assert "alignment_mean" in by_detector and "appearance_mmd_size" not in by_detector
    assert by_detector["appearance_mmd"] == first["appearance_mmd"]
    with pytest.raises(OptimizerError, match="alignment_objective: 'appearance' .* needs enumerate_bins"):
        _run(tiny_config(outer={"alignment_objective": "appearance"}), val_set, tmp_path / "bad")


@pytest.mark.parametrize("estimator", ["both", "pathwise"])
def test_the_appearance_objective_moves_the_distance_toward_the_validation_objects(
    tmp_path: Path, val_set: LabelledSet, estimator: str
) -> None:
    """With the azimuth not learnt (no enumerated bins), 'appearance' still moves the distance:
    psi starts twice as far as the validation objects (0.7 m vs 0.35 m) and comes nearer, by
    the box sizes' MMD alone; by the score function under either estimator (the boxes are the
    recorded ones, so a pathwise derivative through the pixels gives the size none)."""
    config = tiny_config(psi={"learnable": ["distance"], "initial": {**PSI, "distance_median": 0.7}, "learning_rate": 0.1},
                         outer={"enumerate_bins": True, "alignment_objective": "appearance",
                                "appearance_parts": ["distance"], "estimator": estimator},
                         budget={"images_per_iteration": 12, "outer_iterations": 3},
                         detector={"sample_images": 0, "val_map_every": 0})
    history = _run(config, val_set, tmp_path / "run").history
    medians = [record["psi"]["distance_m"]["median"][0] for record in history]
    assert medians[-1] < 0.7 - 0.1 and medians == sorted(medians, reverse=True), medians
    assert "alignment_mean" not in history[0] and history[0]["appearance_mmd_size"] > history[-1]["appearance_mmd_size"]


def test_the_appearance_objective_moves_the_exposure_through_the_renderer(tmp_path: Path, val_set: LabelledSet) -> None:
    """Exposure by the pathwise MMD gradient (estimator 'both'): images one stop darker than
    the validation objects' come brighter at every step, and the gradient took no detector."""
    config = tiny_config(psi={"learnable": ["exposure"], "initial": {**PSI, "exposure_mean": -1.0}, "learning_rate": 0.2},
                         outer={"enumerate_bins": True, "alignment_objective": "appearance",
                                "appearance_parts": ["exposure"]},
                         budget={"images_per_iteration": 12, "outer_iterations": 3},
                         detector={"sample_images": 0, "val_map_every": 0})
    history = _run(config, val_set, tmp_path / "run").history
    means = [record["psi"]["exposure_stops"]["mean"][0] for record in history]
    assert means[-1] > -1.0 + 0.3 and means == sorted(means), means
    assert "alignment_mean" not in history[0] and history[0]["appearance_mmd_colour"] > history[-1]["appearance_mmd_colour"]


def test_alignment_ignores_leaves_those_parameters_out_of_the_per_image_rewards(
    tmp_path: Path, val_set: LabelledSet
) -> None:
    """Leaving the Detect head's classification branch out changes the rewards (the same draws
    otherwise); leaving everything out, or naming no parameter, fails with the setting named."""
    settings = {"psi": {"learnable": ["azimuth"]}, "budget": {"outer_iterations": 1},
                "outer": {"alignment_normalisation": "cosine", "pose_group": 2},
                "detector": {"sample_images": 0, "val_map_every": 0}}
    whole = _run(tiny_config(settings), val_set, tmp_path / "whole").history[0]
    boxes = _run(tiny_config(settings, outer={"alignment_ignores": ["model.22.cv3"]}), val_set,
                 tmp_path / "boxes").history[0]
    assert whole["alignment_mean"] != boxes["alignment_mean"]
    assert whole["reward_by_azimuth_bin"] != boxes["reward_by_azimuth_bin"]
    for ignores, message in ((["model.99"], "'model.99' is the start of no parameter name"),
                             (["model."], "leaves no parameter")):
        with pytest.raises(OptimizerError, match=f"alignment_ignores: .*{message}"):
            _run(tiny_config(settings, outer={"alignment_ignores": ignores}), val_set, tmp_path / "bad")


def test_final_init_warmup_starts_every_methods_final_detector_from_one_warmed_up_detector(
    tmp_path: Path, val_set: LabelledSet
) -> None:
    """The warm-up draws from the config's initial psi whatever the method (the oracle's too), so
    uniform, oracle and neural-sim of one seed leave it with the same detector; with
    final_init='warmup' the final detector's training starts from exactly those weights."""
    final = {"budget": {"final_images": 4, "final_epochs": 1}, "final": {"batch_size": 4, "init": "warmup"},
             "detector": {"sample_images": 0, "val_map_every": 0}}
    warmed = {}
    for method, iterations in (("uniform", 0), ("oracle", 0), ("neural-sim", 1)):
        result = _run(tiny_config(final, outer={"method": method}, budget={"outer_iterations": iterations}),
                      val_set, tmp_path / method)
        assert result.status == "completed"
        warmed[method] = load_detector(tmp_path / method / "warmup_detector.pt").state_dict()
        started = load_detector(tmp_path / method / "final_train" / "initial.pt").state_dict()
        assert all(torch.equal(started[name], value) for name, value in warmed[method].items()), method
    for method in ("oracle", "neural-sim"):
        assert all(torch.equal(warmed["uniform"][name], value) for name, value in warmed[method].items()), method
    fresh = build_detector(DetectorConfig(arch="yolov8n-cpu", class_names=CLASSES, image_size=32, seed=3)).state_dict()
    assert not all(torch.equal(fresh[name], value) for name, value in warmed["uniform"].items())
    # The default starts from the initial weights, as before.
    _run(tiny_config(final, outer={"method": "uniform"}, budget={"outer_iterations": 0}, final={"init": "initial"}),
         val_set, tmp_path / "initial")
    started = load_detector(tmp_path / "initial" / "final_train" / "initial.pt").state_dict()
    assert all(torch.equal(started[name], value) for name, value in fresh.items())
    assert not (tmp_path / "initial" / "warmup_detector.pt").exists()
    with pytest.raises(OptimizerError, match="final.init: 'warmup' .* needs detector.warmup_steps >= 1"):
        _run(tiny_config(final={"init": "warmup"}, detector={"warmup_steps": 0}), val_set, tmp_path / "bad")


def test_lookahead_copies_train_on_their_bin_mixed_with_the_same_draws_from_psi(
    tmp_path: Path, val_set: LabelledSet, trained: list
) -> None:
    """lookahead_bin_share=0.5: each bin's copy fine-tunes on that bin's scenes plus as many
    images drawn by psi, and those drawn images are the same for every copy."""
    config = tiny_config(outer={"estimator": "lookahead", "search_metric": "val_loss", "lookahead_bin_share": 0.5},
                         psi={"learnable": ["azimuth"]},
                         budget={"images_per_iteration": 16, "outer_iterations": 1},
                         detector={"sample_images": 0, "val_map_every": 0})
    result = _run(config, val_set, tmp_path)
    copies = [images for iteration, images in trained if iteration == 0][:8]  # then the loop detector's round
    assert [len(images) for images in copies] == [2 + 2] * 8
    assert all(torch.equal(copies[0][2:], images[2:]) for images in copies)  # the same psi draws
    assert len({images[:2].sum().item() for images in copies}) == 8  # each copy its own bin's scenes
    assert len(set(result.history[0]["score_by_azimuth_bin"])) > 1
    with pytest.raises(OptimizerError, match=r"lookahead_bin_share: must be in \(0, 1\]"):
        _run(replace(config, outer=replace(config.outer, lookahead_bin_share=0.0)), val_set, tmp_path / "bad")


def test_a_run_from_the_warmup_cache_equals_one_that_warms_up_itself(tmp_path: Path, val_set: LabelledSet) -> None:
    """Runs that differ only in settings the warm-up does not read share its cached result and
    continue exactly as the run without a cache; another warm-up setting gets its own entry."""
    cache = tmp_path / "warmups"
    config = tiny_config(detector={"warmup_steps": 4}, budget={"outer_iterations": 2})
    alone = _run(config, val_set, tmp_path / "alone")
    first = _run(config, val_set, tmp_path / "first", warmup_cache=cache)
    assert len(list(cache.glob("warmup_*.pt"))) == 1
    from_cache = _run(config, val_set, tmp_path / "from_cache", warmup_cache=cache)
    other_method = _run(replace(config,
                                outer=replace(config.outer, method="uniform"),
                                budget=replace(config.budget, outer_iterations=0)), val_set, tmp_path / "uniform",
                        warmup_cache=cache)
    assert len(list(cache.glob("warmup_*.pt"))) == 1  # the uniform run found the same warm-up

    runs = {"alone": alone, "first": first, "from_cache": from_cache}
    states = {name: load_checkpoint(tmp_path / name) for name in runs}
    for name, state in states.items():
        assert [r["val_loss"] for r in runs[name].history] == [r["val_loss"] for r in alone.history], name
        assert runs[name].images_rendered == alone.images_rendered == 6 * (2 + 2), name
        assert all(torch.equal(value, states["alone"].detector[key]) for key, value in state.detector.items()), name
        assert all(torch.equal(value, states["alone"].psi[key]) for key, value in state.psi.items()), name
    uniform = load_checkpoint(tmp_path / "uniform")
    assert uniform.val_loss_start == states["alone"].val_loss_start  # the same warmed-up detector
    assert other_method.images_rendered == 6 * 2

    shorter = replace(config, detector=replace(config.detector, warmup_steps=2),
                      budget=replace(config.budget, outer_iterations=0))
    _run(shorter, val_set, tmp_path / "shorter", warmup_cache=cache)
    assert len(list(cache.glob("warmup_*.pt"))) == 2

    for entry in cache.glob("warmup_*.pt"):
        entry.write_bytes(b"not a warm-up")
    with pytest.raises(OptimizerError, match=r"(?s)not a readable nerfsim warm-up .*delete it to warm up again"):
        _run(config, val_set, tmp_path / "damaged", warmup_cache=cache)


def test_in_loop_photometric_effects_reach_the_detector_and_the_pathwise_rerender_draws_the_same(
    tmp_path: Path, val_set: LabelledSet, trained: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PhotometricConfig.in_loop the detector trains on photo-like renders, and the
    pathwise hypergradient's re-render of a chunk (and the appearance objective's) gets the very
    effects the detector saw."""
    from optimizer import loop as loop_module

    outputs: dict[tuple, list] = {}
    original = loop_module._Loop.photograph

    def recording(self, images, iteration, round_index, start):
        out = original(self, images, iteration, round_index, start)
        outputs.setdefault((iteration, round_index, start), []).append(out.detach().clone())
        return out

    monkeypatch.setattr(loop_module._Loop, "photograph", recording)
    config = tiny_config(outer={"estimator": "pathwise"},
                         psi={"learnable": ["distance", "exposure"]},
                         budget={"outer_iterations": 1},
                         detector={"val_map_every": 0, "sample_images": 0})
    _run(config, val_set, tmp_path / "plain")
    plain = [images for _, images in trained]
    trained.clear()
    outputs.clear()
    _run(replace(config, scene=replace(config.scene, photometric={"in_loop": True})), val_set, tmp_path / "photo")
    assert [i for i, _ in trained] == [-1, 0]  # the warm-up round and the iteration
    assert all(not torch.allclose(a, b, atol=1e-3) for a, (_, b) in zip(plain, trained))
    rendered, rerendered = outputs[(0, 0, 0)]  # the iteration's images, then the pathwise re-render
    assert torch.allclose(rendered, rerendered, atol=1e-5)
    outputs.clear()  # the appearance objective's re-render (exposure by the look) draws the same too
    by_look = tiny_config(outer={"enumerate_bins": True, "alignment_objective": "appearance", "appearance_parts": ["exposure"]},
                          psi={"learnable": ["exposure"]}, scene={"photometric": {"in_loop": True}},
                          budget={"outer_iterations": 1}, detector={"val_map_every": 0, "sample_images": 0})
    _run(by_look, val_set, tmp_path / "by_look")
    chunks = [found for (iteration, _, _), found in outputs.items() if iteration == 0]
    assert chunks and all(len(found) == 2 and torch.allclose(*found, atol=1e-5) for found in chunks)
