"""Shift benchmarks: does the loop learn the target's scene distribution, and does it pay off?

The paper's YCB-synthetic protocol at CPU scale. Six YCB-Video objects are six classes (NeRF
assets from benchmarks/assets.py). The target validation and test sets are rendered by the MESH
renderer (mitsuba: a real domain gap to the NeRF renderer the loop trains on) over real photo
backgrounds, each with a shifted distribution:

- pose: azimuths from 2 of the 8 bins only (45-135 degrees); psi learns the azimuth bins;
- zoom: close-ups only (median distance 0.33 m instead of 0.6 m); psi learns the distance;
- lighting: dim only (-1.5 stops instead of 0); psi learns the exposure;
- elevation: seen from above (median 50 degrees instead of 25); psi learns the elevation;
- colour: a warm cast (channel gains 1.4, 1.0, 0.65 instead of 1); psi learns the colour gain;
- class_mix: two of the six objects only; psi learns the class mix;
- background: two of the seven photo backgrounds only; psi learns the background choice.

Issue 24's protocol (the default methods): on every shift the product's default preset
(``default``: optimizer.presets.DEFAULT_PRESET, as a job that names no preset runs it, only the
shift's psi step sizes set), uniform and the oracle, 3 seeds; per part the fraction of the
uniform -> oracle test-mAP gap closed and the distance of the learned psi to the target
(psi_distance). The research methods below stay available with --methods.

Methods, all through optimizer.loop.run_loop with the same warm-up, outer iterations, images
per iteration and final dataset size (equal rendered-image budgets): uniform (psi fixed at its
initial value), oracle (psi = the target's distribution), neural-sim with each estimator
(pathwise, score, both; on the pose shift also lookahead, and both with the azimuth bins
enumerated, with and without the classification branch left out of the alignment: enumerate,
enumerate-box, box; enumerate-box-mixture ascends the cosine between u and psi's mean unit
gradient instead of the mean per-image cosine; appearance moves the bins by no detector
gradient at all, matching the crops of psi's objects to the validation objects' (optimizer.appearance)),
REINFORCE on the validation mAP, random search; neural-sim-cg and neural-sim-cg-fd are the paper's
method with a job's CG solve (the research methods' identity takes no Hessian product) and
exact or finite-difference products (SOLVED). The learning methods
learn one distribution shared by all classes (the shifts are the same for every object).

The final stage is the same for every method: its final detector starts from the detector the
warm-up left (the warm-up draws from the initial psi whatever the method, so one seed's runs
share it: final_init='warmup'), trains on final_images images of the method's final psi
without horizontal flips (a flip turns an object's azimuth into another: it would blur the
pose distribution under study), and is scored by its test mAP50-95. A run's score is the mean
over several such detectors on the pose shift (Budget), trained with different Ultralytics seeds on the same
images: one detector's score moves by about 0.015 from one training seed to the next (pose
shift, seed 0, five training seeds: uniform 0.495 +- 0.010, oracle 0.528 +- 0.014), half of
what separates the pose shift's oracle from uniform. The fixed baselines skip the outer
iterations, which cannot change their result. The pose shift is also scored by the
total-variation distance of the learned azimuth histogram to the target's. gap closed =
(method - uniform) / (oracle - uniform), on the means over seeds.

    python benchmarks/shift.py [--quick] [--shifts pose zoom lighting] [--seeds 0 1 2]

The full run adds neural-sim@half (the headline estimator with half the outer iterations), to
see whether it reaches REINFORCE's test mAP with half of REINFORCE's search images (those of the
outer iterations: the warm-up is one shared run per seed, see HALF), and neural-sim@twice
(twice the outer iterations), to see whether psi keeps moving, and reinforce@twice, which the
headline estimator's full run should reach with half its search images.
Both modes use the quick NeRF assets of benchmarks/assets.py. A finished run (same config,
same folder) is reused, so the runs can be split over processes (--shifts, --methods, --seeds)
and gathered into one table by a last call with everything.

--quick: every shift, one seed, uniform / oracle / default, a smaller budget (QUICK: fewer
validation and test images, 4 outer iterations with three times the psi steps, a smaller final
dataset, one final detector per run). The pose-only quick mode of sessions 5-10 (uniform,
oracle, neural-sim-appearance, REINFORCE; 100 validation and 300 test images, 200 warm-up
steps, 6 outer iterations of 96 images, 240 final images for 24 epochs, 2 final detectors per
run) took 14.7 minutes.

Measured 2026-12-06, session 14 (--quick, seeds 0 1 2, one final detector per run, 2 shared
cores, contended, one thread; 40 min for uniform / oracle / default / appearance with the
target sets to build, 6.4 min for the default alone after that). The default preset is now
``appearance`` (every part by the look; exposure and colour gain by the pathwise MMD gradient):
``default_gap_closed_min=0.440 gap_closed_azimuth=0.689 gap_closed_distance=0.794
gap_closed_exposure=0.857 gap_closed_elevation=1.057 gap_closed_color_gain=0.440
gap_closed_class_mix=0.931 gap_closed_background=1.431``, psi distances 0.397 (TV), 0.065 m,
0.244 stops, 8.6 deg, 0.138, 0.014 (TV), 0.287 (TV) against uniform's 0.750, 0.270, 1.5, 25,
0.256, 0.667, 0.714: every part nearer its target on every seed. The previous default
(``neural-sim-appearance``) in the same run: min -1.710 (colour gain, 0.981 from its target),
azimuth 0.689, distance 0.449, exposure 0.636, elevation 0.227, class mix 0.714, background
0.883. Its runs reproduced the ``appearance`` method's bit for bit (same config, deterministic
final trainings). Full budget, 3 seeds, default / uniform / oracle (two processes split by
shift, 35 min): ``default_gap_closed_min=0.501 gap_closed_azimuth=1.172 gap_closed_distance=0.501
gap_closed_exposure=0.913 gap_closed_elevation=0.750 gap_closed_color_gain=0.891
gap_closed_class_mix=0.986 gap_closed_background=0.710`` (psi distances 0.047, 0.072 m, 0.220
stops, 8.4 deg, 0.040, 0.001, 0.076). Session 13: docs/findings.md.

Writes benchmarks/results/shift/<mode>/: results.json, table.md, map.png, pose_histograms.png.
Last line: ``default_gap_closed_min=<worst part> gap_closed_<part>=<x> ... psi_distance_<part>=<y> ...``
for the default preset (for --headline's method when --methods leaves out ``default``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder leads sys.path and benchmarks/detector.py would shadow the
# detector package: put the repository root there instead. Ultralytics stays offline.
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.assets import QUICK_BUDGET, SHIFT_OBJECTS, YCB, load_assets  # noqa: E402
from detector.datasets import LabelledSet, load_dataset  # noqa: E402
from detector.evaluate import evaluate  # noqa: E402
from detector.model import load_detector  # noqa: E402
from optimizer.baselines import azimuth_total_variation  # noqa: E402
from optimizer.config import OptimizeConfig, merged  # noqa: E402
from optimizer.dataset import render_dataset  # noqa: E402
from optimizer.final_training import train_final_detector  # noqa: E402
from optimizer.loop import run_loop  # noqa: E402
from optimizer.report import write_json_atomic  # noqa: E402
from optimizer.psi import Psi, PsiConfig  # noqa: E402
from optimizer.result import completed_report  # noqa: E402
from renderer.backgrounds import BackgroundSet  # noqa: E402
from renderer.mesh import MeshSceneRenderer, MeshSceneRendererConfig, load_textured_mesh  # noqa: E402
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig  # noqa: E402

BACKGROUNDS = YCB.parent / "backgrounds"
CACHE = Path(__file__).resolve().parent / "cache" / "shift_targets"
RESULTS = Path(__file__).resolve().parent / "results" / "shift"

BASE_PSI = {
    "elevation_range_deg": [0.0, 60.0],
    "elevation_median_deg": 25.0,
    "distance_median": 0.6,
    "distance_log_std": 0.2,
    "exposure_std": 0.25,
    "plain_background": False,
    "offset_range": [0.15, 0.15],
}
"""The initial psi of every method (and the untouched parts of every target): JSON-able
PsiConfig fields."""

SHIFTS = {
    "pose": {"learnable": ["azimuth"], "target": {"azimuth_bin_probs": [0, 1, 1, 0, 0, 0, 0, 0]}, "psi_lr": 0.3,
             "psi_warmup_iterations": 2, "alignment_normalisation": "cosine"},
    "zoom": {"learnable": ["distance"], "target": {"distance_median": 0.33, "distance_log_std": 0.12}, "psi_lr": 0.1,
             "alignment_normalisation": "cosine"},
    "lighting": {"learnable": ["exposure"], "target": {"exposure_mean": -1.5, "exposure_std": 0.2}, "psi_lr": 0.15},
    "elevation": {"learnable": ["elevation"], "target": {"elevation_median_deg": 50.0}, "psi_lr": 0.1},
    "colour": {"learnable": ["color_gain"], "target": {"color_gain_median": [1.4, 1.0, 0.65]}, "psi_lr": 0.1},
    "class_mix": {"learnable": ["class_mix"], "target": {"class_probs": [0.5, 0.5, 0, 0, 0, 0]},
                  "psi_lr": 0.3},
    "background": {"learnable": ["background"], "target": {"background_probs": [0.5, 0.5, 0, 0, 0, 0, 0]},
                   "psi_lr": 0.3},
}
"""Per shift: the part psi learns, the target's distribution (Psi.from_target arguments) and
psi's Adam step (bin logits need larger steps than a log-distance or an exposure in stops; the
pose shift's grows over its first outer iterations: Adam's first steps are full-size whatever
the gradient); where the pose shift's azimuth is learnt by the score function (neural-sim
score and both), its per-image rewards are cosines (see docs/findings.md: standardised dot products moved
psi away from the target)."""


PART_OF = {"pose": "azimuth", "zoom": "distance", "lighting": "exposure", "elevation": "elevation",
           "colour": "color_gain", "class_mix": "class_mix", "background": "background"}
"""The psi part each shift moves (the last line's ``gap_closed_<part>``). The background
shift's target draws 2 of the 7 photo backgrounds of the shared assets (BACKGROUNDS)."""


def psi_distance(shift: str, snapshot: dict) -> float:
    """How far a learned psi (Psi.snapshot()) is from ``shift``'s target, 0 at the target: pose,
    class mix, background: total variation of the histogram (mean over classes where per
    class); zoom: |median distance - target| in metres, elevation in degrees, lighting in
    stops (means over classes); colour: mean |log gain - log target| over the channels."""
    target = SHIFTS[shift]["target"]
    if shift == "pose":
        return azimuth_total_variation(snapshot["azimuth"]["probs"], target["azimuth_bin_probs"])
    if shift in ("class_mix", "background"):
        key = "class_probs" if shift == "class_mix" else "background_probs"
        wanted = torch.tensor(target[key], dtype=torch.float)
        return 0.5 * float((torch.tensor(snapshot[key]) - wanted / wanted.sum()).abs().sum())
    if shift == "colour":
        gains = torch.tensor(snapshot["color_gain"]["median"]).log()
        return float((gains - torch.tensor(target["color_gain_median"]).log()).abs().mean())
    key, entry, field = {"zoom": ("distance_median", "distance_m", "median"),
                         "elevation": ("elevation_median_deg", "elevation_deg", "median"),
                         "lighting": ("exposure_mean", "exposure_stops", "mean")}[shift]
    return abs(statistics.fmean(snapshot[entry][field]) - target[key])


@dataclass(frozen=True)
class Budget:
    """Work per run (the same for every method)."""

    image_size: int
    val_images: int
    test_images: int
    warmup_steps: int
    pose_warmup_steps: int
    """The pose shift's (every method's): 200 steps, the warm-up after which the outer objective
    was measured to single out the target's bins (benchmarks/pose_objective.py); the per-image
    signal was no stronger after 400 (docs/findings.md, findings 8 and 10)."""
    outer_iterations: int
    images_per_iteration: int
    pose_images_per_iteration: int
    """The pose shift's (every method's): its per-image signal is the weakest (docs/findings.md)."""
    inner_steps: int
    final_images: int
    final_epochs: int
    final_detectors: int
    """Final detectors whose mean test mAP scores a run (final_detector_maps): the zoom and
    lighting shifts' oracle - uniform gaps are about 0.23 and 0.32, far above one detector's
    spread over training seeds (about 0.015)."""
    pose_final_detectors: int
    """The pose shift's: its oracle - uniform gap is about 0.03, twice that spread."""
    psi_step_scale: float = 1.0
    """Factor on every learning shift's psi step but the pose shift's (whose steps and warm-up
    were measured at both budgets): Adam moves a psi coordinate by about one step per outer
    iteration, so a run with a third of the iterations needs three times the step to be able to
    cover the same distance (at 4 x 0.1 the elevation's logit could move 0.4 of the 1.95 to
    the target)."""


QUICK = Budget(image_size=64, val_images=60, test_images=150, warmup_steps=40, pose_warmup_steps=100, outer_iterations=4,
               images_per_iteration=32, pose_images_per_iteration=64, inner_steps=10, final_images=160, final_epochs=16,
               final_detectors=1, pose_final_detectors=1, psi_step_scale=3.0)
"""Seven shifts x three methods in at most 25 minutes on 2 cores (unmeasured: see the docstring)."""
FULL = Budget(image_size=64, val_images=100, test_images=300, warmup_steps=60, pose_warmup_steps=200, outer_iterations=12,
              images_per_iteration=64, pose_images_per_iteration=96, inner_steps=10, final_images=240, final_epochs=24,
              final_detectors=1, pose_final_detectors=4)

FINAL_TRAINER = {"mosaic": 0.0, "close_mosaic": 0, "fliplr": 0.0, "warmup_epochs": 1.0, "optimizer": "AdamW", "lr0": 0.002}
"""Ultralytics settings of the final detector for a few hundred 64 px images: no mosaic (it
shrinks objects to a few pixels), no horizontal flips (they change the pose distribution), a
short warm-up and AdamW. From the initial weights with Ultralytics' defaults (and its nominal
batch of 64) 8 epochs on 240 images left every method at test mAP50-95 0.000; with these (flips
on), 30 epochs gave 0.288 for the uniform baseline. From the warmed-up detector, uniform on the
pose shift (seed 0) scores 0.48 with flips and 0.49 without."""

METHODS = {
    "uniform": {"method": "uniform"},
    "oracle": {"method": "oracle"},
    "neural-sim-pathwise": {"method": "neural-sim", "estimator": "pathwise"},
    "neural-sim-score": {"method": "neural-sim", "estimator": "score"},
    "neural-sim-both": {"method": "neural-sim", "estimator": "both"},
    "neural-sim-lookahead": {"method": "neural-sim", "estimator": "lookahead", "search_metric": "val_loss",
                             "lookahead_bin_share": 0.5},
    "neural-sim-enumerate": {"method": "neural-sim", "estimator": "both", "enumerate_bins": True},
    "neural-sim-enumerate-box": {"method": "neural-sim", "estimator": "both", "enumerate_bins": True,
                                 "alignment_ignores": ["model.22.cv3"]},
    "neural-sim-box": {"method": "neural-sim", "estimator": "both", "alignment_ignores": ["model.22.cv3"]},
    "neural-sim-enumerate-box-mixture": {"method": "neural-sim", "estimator": "both", "enumerate_bins": True,
                                         "alignment_ignores": ["model.22.cv3"], "alignment_objective": "mixture"},
    "neural-sim-appearance": {"method": "neural-sim", "estimator": "both", "enumerate_bins": True,
                              "alignment_objective": "appearance"},
    "reinforce": {"method": "reinforce"},
    "random-search": {"method": "random-search"},
    "default": {},
    "appearance": {},
}
"""Each method's OptimizeConfig.outer fields ("default": the product's default preset, none set;
"appearance": the preset of that name, none set)."""
SOLVED = {"neural-sim-cg": {"method": "neural-sim", "estimator": "both"},
          "neural-sim-cg-fd": {"method": "neural-sim", "estimator": "both"}}
"""The neural-sim preset's method with a job's inverse-Hessian solve instead of the research
methods' identity (with which no Hessian product is taken): exact products, and
finite-difference ones (issue 27: an approximation is kept only if the gap closed does not drop)."""
METHODS.update(SOLVED)
HYPERGRADIENT = {"neural-sim-cg": {"inverse_hessian": "cg", "hessian_product": "double-backward"},
                 "neural-sim-cg-fd": {"inverse_hessian": "cg", "hessian_product": "finite-difference"}}
"""Each method's OptimizeConfig.hypergradient fields over the benchmark's (inverse_hessian 'identity')."""
ONLY_FOR = {
    "neural-sim-lookahead": {"pose"}, "neural-sim-enumerate": {"pose"}, "neural-sim-enumerate-box": {"pose"},
    "neural-sim-box": {"pose"}, "neural-sim-enumerate-box-mixture": {"pose"},
    "neural-sim-appearance": {"pose"}, "neural-sim-score": {"lighting"}, "neural-sim-pathwise": {"pose", "zoom"},
}
"""Methods run on some shifts only. lookahead learns only the azimuth bins; its reward is the
validation loss: after the warm-up it ranks the bins as the validation mAP does, with far less
spread (benchmarks/pose_objective.py). score is the same estimator as both on the pose and zoom
shifts (both learns the azimuth and the distance by the score function too), pathwise the same
as both on the lighting shift (both learns the exposure pathwise)."""
HALF = "@half"
"""Suffix of a method run with half the outer iterations (e.g. neural-sim-both@half): does it
reach REINFORCE's test mAP with at most half of REINFORCE's search images? The warm-up stays
whole: it draws from the initial psi whatever the method, so one seed's methods share its
detector, which is also where every final detector starts (final_init='warmup'). Halving it
too (session 4) compared final detectors with different pre-training, not searches."""
TWICE = "@twice"
"""Suffix of a method run with twice the outer iterations (the same warm-up): does psi keep
moving toward the target with more loop images?"""


def base_method(method: str) -> str:
    """``method`` without its budget suffix."""
    return method.removesuffix(HALF).removesuffix(TWICE)


MIN_GAP = 0.015
"""Smallest oracle - uniform test mAP50-95 gap a fraction of which is reported: one final
detector's spread over Ultralytics training seeds (module docstring). Below it (or with the
oracle below uniform) the shift does not separate the distributions at this budget, and a
gap closed would divide noise by noise."""

STRATIFIED = {"pose"}
"""Shifts whose target sets hold the target's azimuth bins in exactly equal shares (rendered
stratified, one stratum per target bin: optimizer.dataset.render_dataset). Drawn at random, the
pose shift's 100 validation images held 42 / 58 of bins 1 / 2 and its 300 test images 58 / 42:
a method that learnt the validation set's histogram was scored against the other one
(docs/findings.md, finding 26). Since session 10; the earlier pose rows used the drawn sets."""


RENAMED = {"class_mix": "class_mix_two"}
"""Shifts whose target changed, by the name of their new target sets. The class mix's target
drew two of the objects in 70 % of the images, the other four in 7.5 % each, until session 13:
its test mAP (pycocotools' mean over the classes in the test set) weighs each of the six
classes alike whatever the mix, so the oracle trained on the mix could only trade the rare
classes' AP for the common ones' (oracle - uniform -0.026 and -0.021). With two classes only,
the test set holds those two, and what the others' images teach is the part the mix moves."""


def target_name(shift: str) -> str:
    """``shift``'s name in the folders of its target sets and runs (``pose_stratified``,
    RENAMED): runs against other target sets are never reused."""
    return f"{shift}_stratified" if shift in STRATIFIED else RENAMED.get(shift, shift)


def target_sets(shift: str, budget: Budget, backgrounds: BackgroundSet) -> tuple[LabelledSet, LabelledSet]:
    """Validation and test sets of ``shift``, rendered by the mesh renderer (cached)."""
    psi_config = PsiConfig(num_classes=len(SHIFT_OBJECTS), num_backgrounds=len(backgrounds),
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in BASE_PSI.items()})
    target = SHIFTS[shift]["target"]
    if shift in STRATIFIED:
        probs = target["azimuth_bin_probs"]
        strata = [Psi.from_target(psi_config, **{**target, "azimuth_bin_probs": [float(k == b) for k in range(len(probs))]})
                  for b, p in enumerate(probs) if p > 0]
    else:
        strata = [Psi.from_target(psi_config, **target)]
    meshes = None
    sets = []
    for split, count, seed in (("val", budget.val_images, 1000), ("test", budget.test_images, 2000)):
        folder = CACHE / f"{target_name(shift)}_{split}_{count}_{budget.image_size}px"
        if not (folder / "annotations.json").is_file():
            if meshes is None:
                meshes = [load_textured_mesh(YCB / name / "textured.obj") for name in SHIFT_OBJECTS]
            renderer = MeshSceneRenderer(MeshSceneRendererConfig(spp=16), meshes, backgrounds)
            render_dataset(renderer, strata, count, budget.image_size, folder, list(SHIFT_OBJECTS), seed=seed,
                           photometric=None)  # the shifts' targets stay the plain renders they were measured on
        sets.append(load_dataset(folder / "annotations.json"))
    return sets[0], sets[1]


def run_config(shift: str, method: str, seed: int, budget: Budget) -> OptimizeConfig:
    # A fixed psi gains nothing from outer iterations (the final detector starts from the
    # warmed-up detector and sees only the final dataset), so the fixed baselines skip them.
    base = base_method(method)
    fixed = METHODS[base].get("method") in ("uniform", "oracle")
    half = method.endswith(HALF)
    iterations = budget.outer_iterations // 2 if half else budget.outer_iterations * (2 if method.endswith(TWICE) else 1)
    warmup = budget.pose_warmup_steps if shift == "pose" else budget.warmup_steps
    # The research methods name every setting they were measured with on top of the paper's
    # preset (their finished runs stay valid); "default" runs the product's default preset as a
    # job that names none would, only the shift's step sizes set.
    research = {} if base == "default" else {"preset": "appearance"} if base == "appearance" else {
        "preset": "neural-sim",
        "outer": {"estimator": "both",
                  "alignment_normalisation": SHIFTS[shift].get("alignment_normalisation", "standardise")
                  if base.startswith("neural-sim") else "standardise"},
    }
    settings = {
        "seed": seed,
        # the synthetic shifts keep the plain renders their findings were measured on
        "scene": {"harvest_backgrounds": False, "photometric": None},
        "psi": {"learnable": list(SHIFTS[shift]["learnable"]), "share_classes": True, "initial": dict(BASE_PSI),
                "oracle": dict(SHIFTS[shift]["target"]), "learning_rate": SHIFTS[shift]["psi_lr"] * (1.0 if fixed or shift == "pose" else budget.psi_step_scale),
                "warmup_iterations": SHIFTS[shift].get("psi_warmup_iterations", 0), "entropy_weight": 0.01,
                "priors": False},
        "outer": {"pose_group": 4},
        # The identity solve takes no Hessian product; the product named is the one the finished
        # runs were saved with (the default before issue 27), so they stay reusable.
        "hypergradient": {"inverse_hessian": "identity", "hessian_product": "double-backward"},
        "budget": {"outer_iterations": 0 if fixed else iterations,
                   "images_per_iteration": budget.pose_images_per_iteration if shift == "pose"
                   else budget.images_per_iteration,
                   "inner_steps": budget.inner_steps, "final_images": budget.final_images,
                   "final_epochs": budget.final_epochs},
        "detector": {"arch": "yolov8n-cpu", "image_size": budget.image_size, "inner_learning_rate": 0.002,
                     "warmup_steps": warmup, "val_map_every": 0, "sample_images": 2},
        # Renders alone, as the recorded results: the target sets are renders too (issue 23's
        # real photos in the final training would mix the validation set into it).
        "final": {"init": "warmup", "trainer_overrides": dict(FINAL_TRAINER), "real_share": 0.0,
                  "real_only_baseline": False, "uniform_baseline": False},  # the benchmark's own uniform arm
    }
    return OptimizeConfig.from_dict(merged(settings, research, {"outer": METHODS[base],
                                                                "hypergradient": HYPERGRADIENT.get(base, {})}),
                                    benchmark=True)


def final_detector_maps(config: OptimizeConfig, class_names: list[str], run_dir: Path, test_set: LabelledSet,
                        first_map: float, count: int) -> list[float]:
    """Test mAP50-95 of ``count`` final detectors trained on the run's final dataset: the run's
    own (``first_map``) and ``count - 1`` more, each with its own Ultralytics seed (data order
    and augmentation; the same start weights). Their mean is the run's score: one detector's
    test mAP varies from one training seed to the next by about half of what separates the pose
    shift's oracle from uniform (module docstring). Kept in the run folder and reused."""
    record = run_dir / "final_detectors.json"
    maps = [first_map, *(json.loads(record.read_text()) if record.is_file() else [])[1:count]]
    for index in range(len(maps), count):
        scratch = run_dir / "final_detectors" / str(index)
        best = train_final_detector(config, class_names, run_dir, scratch, seed=config.seed + 1000 * index,
                                    device=torch.device("cpu"))
        maps.append(evaluate(load_detector(best), test_set, config.detector.image_size, progress=False).map50_95)
        shutil.rmtree(scratch)
        write_json_atomic(record, maps)
    return maps


def distinguishable_bins(renderer: SceneRenderer, class_names: list[str], size: int) -> dict[str, list[float]]:
    """For each class and azimuth bin: how far its view (bin centre, elevation 25 degrees, over
    white) is from the nearest other bin's view or that view mirrored: the mean absolute RGB
    difference over the pixels either view covers. Near 0: the detector cannot tell this bin
    from another by its image, so no estimator can prefer it."""
    bins = 8
    result = {}
    for class_id, name in enumerate(class_names):
        with torch.no_grad():
            views = [renderer.render(_single_view(class_id, (k + 0.5) * 360 / bins), size) for k in range(bins)]
        rgb = torch.stack([v.rgb[0] for v in views])
        covered = torch.stack([v.alpha[0] for v in views]) > 0.5
        distances = []
        for k in range(bins):
            nearest = math.inf
            for j in range(bins):
                if j == k:
                    continue
                for other, other_covered in ((rgb[j], covered[j]), (rgb[j].flip(-1), covered[j].flip(-1))):
                    union = (covered[k] | other_covered).float()
                    difference = ((rgb[k] - other).abs().mean(0, keepdim=True) * union).sum() / union.sum().clamp_min(1)
                    nearest = min(nearest, float(difference))
            distances.append(round(nearest, 3))
        result[name] = distances
    return result


def _single_view(class_id: int, azimuth_deg: float):
    from renderer.scene_types import SceneParams

    return SceneParams.single([class_id], [azimuth_deg], [25.0], [0.6], background_color=(1.0, 1.0, 1.0))


def summarise(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(finite), "std": statistics.pstdev(finite) if len(finite) > 1 else 0.0, "n": len(finite)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shifts", nargs="+", choices=list(SHIFTS), default=None)
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"of {list(METHODS)}, each optionally with the suffix {HALF} or {TWICE}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--headline", default="appearance",
                        choices=[m.removeprefix("neural-sim-") for m in METHODS if m.startswith("neural-sim-")],
                        help="the neural-sim method of the pose shift's last line, of @half and of @twice (default: "
                             "appearance, the one that meets the pose targets: docs/findings.md, finding 26)")
    parser.add_argument("--final-detectors", type=int, default=None,
                        help="final detectors trained per run, whose mean test mAP is the run's (default: the budget's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: at 64 px a second thread hardly helps, and the quick mode "
                             "took 14.9 min with 1 thread in session 10, 19.0 min with 2 in session 9 on another machine)")
    parser.add_argument("--progress", action="store_true", help="progress bars of every stage")
    parser.add_argument("--gather", action="store_true",
                        help="run no loop: tabulate the finished runs among those asked for")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # Both modes use the quick assets: at 64 px they render what the detector can resolve, and
    # the full-budget ones take about 5 minutes per object more on this machine.
    budget, asset_budget = (QUICK if args.quick else FULL), QUICK_BUDGET
    shifts = args.shifts or list(SHIFTS)
    headline = f"neural-sim-{args.headline}"
    methods = args.methods or ["uniform", "oracle", "default"]
    unknown = [m for m in methods if base_method(m) not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; use {list(METHODS)}, optionally with the suffix {HALF} or {TWICE}")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = RESULTS / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    fields = load_assets(SHIFT_OBJECTS, asset_budget)
    backgrounds = BackgroundSet.from_folder(BACKGROUNDS, max_side=256)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40.0, samples_per_ray=64), fields, backgrounds)
    class_names = list(SHIFT_OBJECTS)
    setup_seconds = time.perf_counter() - started
    print(f"assets ready in {setup_seconds:.0f} s", flush=True)

    runs: dict[str, dict[str, list[dict]]] = {}
    for shift in shifts:
        began = time.perf_counter()
        val_set, test_set = target_sets(shift, budget, backgrounds)
        print(f"[{shift}] target sets ready in {time.perf_counter() - began:.0f} s "
              f"({len(val_set)} val, {len(test_set)} test, mesh-rendered)", flush=True)
        runs[shift] = {}
        for method in methods:
            if shift not in ONLY_FOR.get(base_method(method), {shift}):
                continue
            runs[shift][method] = []
            for seed in seeds:
                config = run_config(shift, method, seed, budget)
                run_dir = out / "runs" / target_name(shift) / method / f"seed{seed}"
                if args.gather and completed_report(run_dir, config) is None:
                    continue
                started_with = run_dir / "config.json"
                if started_with.is_file() and config.differences(json.loads(started_with.read_text())):
                    shutil.rmtree(run_dir)  # a run of an older version of this benchmark: start afresh
                # A finished run of the same config is reused (so runs can be split over
                # processes and gathered by one last call); its own stage times are kept.
                # One warm-up per seed and warm-up setting: every method starts from it (final_init).
                result = run_loop(config, renderer, class_names, val_set, test_set, run_dir, progress_bar=args.progress,
                                  warmup_cache=out / "warmups" / asset_budget.tag)
                seconds = sum(json.loads(result.report.read_text())["seconds"].values())
                probs = result.psi["azimuth"]["probs"]
                maps = final_detector_maps(config, class_names, run_dir, test_set, result.metrics["test"]["map50_95"],
                                           args.final_detectors or (budget.pose_final_detectors if shift == "pose"
                                                                    else budget.final_detectors))
                record = {
                    "seed": seed,
                    "test_map50_95": statistics.fmean(maps),
                    "test_map50_95_per_final_detector": maps,
                    "test_map50": result.metrics.get("test", {}).get("map50"),
                    "val_map50_95": result.metrics.get("val", {}).get("map50_95"),
                    "psi_distance": psi_distance(shift, result.psi),
                    "azimuth_probs": probs,
                    "images_rendered": result.images_rendered,
                    "seconds": round(seconds, 1),
                }
                runs[shift][method].append(record)
                print(f"[{shift}] {method:22s} seed {seed}: test mAP50-95 {record['test_map50_95']:.4f} "
                      f"psi distance {record['psi_distance']:.3f} images {record['images_rendered']} {seconds:.0f} s",
                      flush=True)
            if not runs[shift][method]:
                del runs[shift][method]  # (--gather: none finished)

    table = {}
    for shift, by_method in runs.items():
        table[shift] = {}
        uniform = summarise([r["test_map50_95"] for r in by_method.get("uniform", [])])["mean"]
        oracle = summarise([r["test_map50_95"] for r in by_method.get("oracle", [])])["mean"]
        for method, records in by_method.items():
            score = summarise([r["test_map50_95"] for r in records])
            gap = None
            if None not in (uniform, oracle, score["mean"]) and oracle - uniform >= MIN_GAP:
                gap = (score["mean"] - uniform) / (oracle - uniform)
            table[shift][method] = {
                "test_map50_95": score,
                "gap_closed": gap,
                "psi_distance": summarise([r["psi_distance"] for r in records]),
                "images_rendered": records[0]["images_rendered"],
                "seconds": summarise([r["seconds"] for r in records]),
            }

    shared_only = table.get("pose", {}).get("uniform")  # renders only the shared warm-up and the final images
    for ours, theirs in ((headline + HALF, "reinforce"), (headline, "reinforce" + TWICE)):
        mine, other = table.get("pose", {}).get(ours), table.get("pose", {}).get(theirs)
        if not (mine and other and shared_only) or None in (mine["test_map50_95"]["mean"], other["test_map50_95"]["mean"]):
            continue
        search_images = [row["images_rendered"] - shared_only["images_rendered"] for row in (mine, other)]
        print(f"pose: {ours} test mAP50-95 {mine['test_map50_95']['mean']:.4f} with {search_images[0]} search images "
              f"vs {theirs} {other['test_map50_95']['mean']:.4f} with {search_images[1]} (both after the same "
              f"warm-up): reaches it: {mine['test_map50_95']['mean'] >= other['test_map50_95']['mean']}")
    bins = distinguishable_bins(renderer, class_names, budget.image_size)
    total_seconds = time.perf_counter() - started
    results = {"budget": vars(budget), "asset_budget": vars(asset_budget), "seeds": seeds, "shifts": shifts,
               "methods": methods, "table": table, "runs": runs, "bin_distinguishability": bins,
               "seconds_total": round(total_seconds, 1), "seconds_assets": round(setup_seconds, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(table, seeds))
    plot_results(runs, table, out)
    print(markdown_table(table, seeds))
    print("bin distinguishability (mean |RGB| difference over the object to the nearest other bin or its mirror "
          f"image, per class and bin): {bins}")
    print(f"total {total_seconds / 60:.1f} min (assets {setup_seconds / 60:.1f} min); results in {out}")
    print(last_line(table, "default" if "default" in methods else headline))


def last_line(table: dict, method: str) -> str:
    """``default_gap_closed_min=<worst part> gap_closed_<part>=... psi_distance_<part>=...
    no_gap=<parts>`` of ``method``: gaps closed on the means over seeds, nan where a run is
    missing or the part's oracle - uniform gap is under MIN_GAP (those parts are listed in
    ``no_gap`` and left out of the minimum)."""
    gaps = {PART_OF[shift]: by_method.get(method, {}).get("gap_closed") for shift, by_method in table.items()}
    distances = {PART_OF[shift]: by_method.get(method, {}).get("psi_distance", {}).get("mean")
                 for shift, by_method in table.items()}
    missing = [PART_OF[shift] for shift, by_method in table.items() if method not in by_method]
    no_gap = [part for part, gap in gaps.items() if gap is None and part not in missing]
    known = [gap for gap in gaps.values() if gap is not None]
    worst = min(known) if known and not missing else None

    def number(value) -> str:
        return "nan" if value is None else f"{value:.3f}"

    return " ".join([f"default_gap_closed_min={number(worst)}", *(f"gap_closed_{p}={number(g)}" for p, g in gaps.items()),
                     *(f"psi_distance_{p}={number(d)}" for p, d in distances.items()),
                     f"no_gap={','.join(no_gap) or '-'}"])


def markdown_table(table: dict, seeds: list[int]) -> str:
    lines = [f"test mAP50-95 mean +- std over seeds {seeds}; gap closed = (method - uniform) / (oracle - uniform)", "",
             "| shift | method | test mAP50-95 | gap closed | psi distance to the target | images rendered | seconds |",
             "|---|---|---|---|---|---|---|"]
    for shift, by_method in table.items():
        for method, row in by_method.items():
            score, distance, seconds = row["test_map50_95"], row["psi_distance"], row["seconds"]
            gap = "-" if row["gap_closed"] is None else f"{row['gap_closed']:.2f}"
            lines.append(f"| {shift} | {method} | {score['mean']:.4f} +- {score['std']:.4f} | {gap} | "
                         f"{distance['mean']:.3f} | {row['images_rendered']} | {seconds['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_results(runs: dict, table: dict, out: Path) -> None:
    shifts = list(table)
    figure, axes = plt.subplots(1, len(shifts), figsize=(5 * len(shifts), 3.5), squeeze=False)
    for axis, shift in zip(axes[0], shifts):
        names = list(table[shift])
        means = [table[shift][m]["test_map50_95"]["mean"] or 0 for m in names]
        stds = [table[shift][m]["test_map50_95"]["std"] or 0 for m in names]
        axis.bar(range(len(names)), means, yerr=stds, capsize=3)
        axis.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        axis.set_title(f"{shift} shift")
        axis.set_ylabel("test mAP50-95")
    figure.tight_layout()
    figure.savefig(out / "map.png", dpi=100)
    plt.close(figure)

    methods = list(runs.get("pose", {}))
    if methods:  # (--gather before any pose run finished: nothing to draw)
        figure, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.6), squeeze=False)
        target = torch.tensor(SHIFTS["pose"]["target"]["azimuth_bin_probs"], dtype=torch.float)
        for axis, method in zip(axes[0], methods):
            probs = torch.tensor([r["azimuth_probs"] for r in runs["pose"][method]]).mean((0, 1))
            axis.bar(range(8), probs.tolist(), label="learned (mean over classes, seeds)")
            axis.step(range(8), (target / target.sum()).tolist(), where="mid", color="k", label="target")
            axis.set_title(method, fontsize=8)
            axis.set_xlabel("azimuth bin")
        axes[0][0].legend(fontsize=6)
        figure.tight_layout()
        figure.savefig(out / "pose_histograms.png", dpi=100)
        plt.close(figure)


if __name__ == "__main__":
    main()
