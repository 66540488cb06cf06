"""Real-photo benchmark (issue 23): does nerfsim's data make a detector better on real photos?

On ../shared/real (YCB-Video frames; README there): the classes are those with boxes in any
split; the labelled photos a user brings are ``train/`` + ``val/``; ``test/`` is scored once per
arm and seed, never used to choose anything. Arms, with the same detector (yolov8n-cpu from
its seeded random initialisation), training settings, images per epoch and seeds:

- ``real``: the photos alone, each repeated to fill the epoch;
- ``fixed`` (reference): renders from psi uniform over the old fixed default ranges
  (Psi.uniform of the default PsiConfig), no loop;
- ``uniform``: renders from a job's starting psi, no loop: what ``run_optimization`` starts
  from for a job with ``val/`` as its validation set (preset 'uniform', no outer iteration),
  i.e. whatever priors from the photos the product applies by default;
- one arm per preset of ``--presets`` (default: the product's default preset,
  optimizer.presets.DEFAULT_PRESET): renders from the psi that ``run_optimization`` learns with
  it, ``val/`` as target (``Budget.loop``: a job's budget, searching at a lower resolution;
  ``final_images=0``, so the loop only learns psi and never sees ``test/``);
- ``uniform+real``, ``<preset>+real``: the first two thirds of those renders plus the photos
  repeated to a third of the epoch (detector.mixing: the product's final-training mix).
  Printed too: each preset's +real arm minus uniform+real seed by seed (paired: the same
  photos, draws and training seed).

Renders have the photos' aspect with the longer side ``Budget.image_size`` (640x480 photos:
160x120 renders at 160), as a job's final dataset (optimizer.final_size); every arm trains and
is scored at ``Budget.image_size`` (Ultralytics letterboxes).

The loop runs as a job does: a scene.json listing the built assets, val/'s COCO annotations
(restricted to the benchmark's classes) as target, so the job's defaults apply (backgrounds
harvested from val/, priors); the arms are rendered with the renderer such a job builds, from
the psi the run saved (psi.json), with the same draws for every psi of a seed.

Assets are built from the meshes in ../shared/assets/ycb by benchmarks/assets.py (quick
budget) and cached under benchmarks/cache/; each seed's loop runs, renders and each finished
arm's scores are cached under benchmarks/cache/real/<mode>_<budget hash>/ (an interrupted run
resumes; delete that folder after a change to the renderer or the loop). Writes
benchmarks/results/real/<mode>/results.json and table.md.

    python benchmarks/real.py [--quick] [--seeds 0 1 2] [--presets appearance ...] [--epochs N]

Last line: ``preset=<the default, or the first of --presets> real_gain_over_real_only=<its +real
/ real mAP50-95> optimised_over_uniform=<its +real / uniform+real mAP50-95>
synthetic_only_map50=<its renders alone> power_drill_ap50=<its +real>``.

Measured 2026-12-06, session 14 (--quick, seeds 0-5, ``--presets appearance
neural-sim-appearance``; seeds 0-2's real, fixed and uniform arms from the session-13 run; 2
shared cores): ``preset=appearance real_gain_over_real_only=4.600 optimised_over_uniform=0.950
synthetic_only_map50=0.441 power_drill_ap50=0.098``; +real minus uniform+real, paired:
appearance -0.009 +- 0.137, neural-sim-appearance -0.036 +- 0.175 (optimised_over_uniform
0.799). No preset beats the starting psi beyond the noise of 20 test frames (README).

Measured 2026-12-06 (--quick, seeds 0 1 2, 2 shared CPU cores with other jobs, one thread; the
real and fixed arms and the assets cached: 13.6 minutes). The product's defaults of this
session: priors from the photos, backgrounds harvested from val/, photometric effects and
clutter, objects standing as captured on the table with contact shadows, one object per image,
renders at the photos' aspect (128x96), the default preset neural-sim-appearance for the loop.
test/ mAP, mean ± stdev over seeds, AP50 per class (master_chef_can has no test boxes):

| arm | mAP50-95 | mAP50 | cracker_box | power_drill | mustard_bottle |
| --- | --- | --- | --- | --- | --- |
| real | 0.024 ± 0.020 | 0.149 ± 0.161 | 0.059 ± 0.071 | 0.000 ± 0.000 | 0.388 ± 0.537 |
| fixed | 0.139 ± 0.009 | 0.407 ± 0.022 | 0.209 ± 0.053 | 0.011 ± 0.019 | 1.000 ± 0.000 |
| uniform | 0.138 ± 0.062 | 0.428 ± 0.172 | 0.701 ± 0.496 | 0.024 ± 0.039 | 0.559 ± 0.046 |
| optimised | 0.146 ± 0.037 | 0.429 ± 0.016 | 0.256 ± 0.029 | 0.030 ± 0.027 | 1.000 ± 0.000 |
| uniform+real | 0.124 ± 0.058 | 0.491 ± 0.162 | 0.439 ± 0.313 | 0.338 ± 0.471 | 0.696 ± 0.258 |
| optimised+real | 0.194 ± 0.057 | 0.641 ± 0.128 | 0.792 ± 0.259 | 0.360 ± 0.485 | 0.769 ± 0.228 |

``real_gain_over_real_only=8.091 optimised_over_uniform=1.562 synthetic_only_map50=0.429
power_drill_ap50=0.360``. The test split is 20 near-duplicate frames of one scene, so the
spread over seeds is wide (uniform+real: 0.058, 0.156, 0.160 per seed; optimised+real 0.259,
0.149, 0.176): the loop's gain over its starting psi is 0.07 mAP50-95 with the photos and 0.008
without, against stdevs of 0.04-0.06. The run of the previous session (square renders, floating
objects, the paper's method): uniform 0.166, optimised 0.178, uniform+real 0.182,
optimised+real 0.158. The scene defaults were chosen on train/ + val/ with
benchmarks/real_defaults.py, never on test/ (docs/findings.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Run as a script, this file's folder leads sys.path and benchmarks/detector.py would shadow the
# detector package: put the repository root there instead. Ultralytics stays offline.
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))

import torch  # noqa: E402

import benchmarks.assets as assets  # noqa: E402
from benchmarks.assets import SHARED  # noqa: E402
from detector.datasets import LabelledSet, load_coco  # noqa: E402
from detector.evaluate import Detections, evaluate_predictions, predict  # noqa: E402
from detector.mixing import write_real_only, write_training_mix  # noqa: E402
from detector.model import DetectorConfig, load_detector  # noqa: E402
from detector.train import train_on_dataset  # noqa: E402
from optimizer.baselines import psi_config  # noqa: E402
from optimizer.config import (
    BudgetConfig,
    DetectorSection,
    FinalConfig,
    OptimizeConfig,
    PsiSettings,
    SceneConfig,
    TargetsConfig,
)
from optimizer.presets import DEFAULT_PRESET, PRESETS  # noqa: E402
from optimizer.dataset import render_dataset  # noqa: E402
from optimizer.final_size import final_image_shape  # noqa: E402
from optimizer.loop import job_renderer, run_optimization  # noqa: E402
from optimizer.psi import Psi, PsiConfig  # noqa: E402
from optimizer.report import write_json_atomic  # noqa: E402
from renderer.scene_renderer import SceneRenderer  # noqa: E402
from renderer.scene_spec import read_scene_spec  # noqa: E402

CACHE = REPO / "benchmarks" / "cache" / "real"
RESULTS = REPO / "benchmarks" / "results" / "real"
BASE_ARMS = ("real", "fixed", "uniform", "uniform+real")
"""The arms every run trains; each preset of --presets adds ``<preset>`` and ``<preset>+real``."""
REAL_SHARE = FinalConfig.real_share
"""The photos' share of a +real arm's epoch: the product's default, so the arm measures its mix."""


LOOP_BUDGET = ("outer_iterations", "images_per_iteration", "inner_steps")
"""Budget.loop's names in OptimizeConfig.budget."""


@dataclass(frozen=True)
class Budget:
    image_size: int = 160
    renders: int = 240
    """Renders per psi and seed: a synthetic-only arm's epoch; an arm +real takes the first 2/3."""
    epochs: int = 30
    batch_size: int = 16
    loop: tuple[tuple[str, int], ...] = (("image_size", 128), ("outer_iterations", 20), ("images_per_iteration", 32),
                                         ("inner_steps", 20), ("warmup_steps", 100))
    """Settings of the closed loop that learns the optimised psi (a job's default budget;
    everything else is a job's default too): OptimizeConfig.budget's LOOP_BUDGET and
    OptimizeConfig.detector's image_size and warmup_steps. It searches at a lower resolution
    than the detector trains at."""

    @property
    def tag(self) -> str:
        """Names the cache folder of this budget, so that a changed budget never reuses results."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


FULL = Budget()
QUICK = Budget(image_size=128, renders=144, epochs=40,
               loop=(("image_size", 64), ("outer_iterations", 8), ("images_per_iteration", 32), ("inner_steps", 20),
                     ("warmup_steps", 100)))
"""A first run at 96 renders and 12 epochs left every arm at 0.000 (nothing learnt from scratch
in 72 steps); the budget was then raised by a probe scored on val/ (renders alone, 160 renders,
40 epochs: val mAP50 0.44), not on test/."""
TRAINER = {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 1.0, "val": False, "plots": False}
"""Ultralytics' augmentations as they are (mosaic, flips, HSV, scale); AdamW and a one-epoch
warm-up as benchmarks/shift.py found necessary for a few hundred images from scratch; nbs is the
batch size (set below), so that every batch is an optimiser step."""


def restrict(dataset: LabelledSet, names: list[str]) -> LabelledSet:
    """``dataset`` with class ids in ``names``' order (matched by name); its categories without
    boxes may be missing from ``names``."""
    mapping = torch.tensor([names.index(n) if n in names else -1 for n in dataset.class_names])
    images = []
    for item in dataset.images:
        classes = mapping[item.classes]
        if (classes < 0).any():
            raise SystemExit(f"{dataset.source}: {item.path.name} has boxes of classes outside {names}")
        images.append(type(item)(item.path, item.width, item.height, item.boxes, classes))
    return LabelledSet(images, list(names), dataset.source)


def scores(model, test: LabelledSet, size: int) -> dict:
    """mAP50-95, mAP50 and each class's AP50 and AP50-95 on ``test``."""
    predictions, boxes, classes = [], [], []
    for batch in test.batches(size, 16):
        predictions += predict(model, batch.images, conf=0.001)
        boxes += [b[k] for b, k in zip(batch.boxes, batch.keep)]
        classes += [c[k] for c, k in zip(batch.classes, batch.keep)]
    overall = evaluate_predictions(predictions, boxes, classes, test.class_names)
    result = {"map50_95": overall.map50_95, "map50": overall.map50, "per_class_ap50_95": overall.per_class_ap,
              "per_class_ap50": {}}
    for name in overall.per_class_ap:
        c = test.class_names.index(name)
        only = [Detections(d.boxes[d.classes == c], d.scores[d.classes == c], d.classes[d.classes == c])
                for d in predictions]
        metrics = evaluate_predictions(only, [b[k == c] for b, k in zip(boxes, classes)],
                                       [k[k == c] for k in classes], test.class_names)
        result["per_class_ap50"][name] = metrics.map50
    return result


def job_inputs(names: list[str], budget: assets.AssetBudget) -> tuple[Path, Path]:
    """A job's scene.json listing the built assets (in ``names``' order) and its validation set:
    val/'s COCO json with only the benchmark's classes (the loop rejects a class the scene
    lacks), file names absolute. Written under CACHE."""
    folder = CACHE / "job"
    folder.mkdir(parents=True, exist_ok=True)
    scene = {"name": "ycb-real", "fov_deg": 40.0,
             "objects": [{"name": n, "path": str(assets.build_asset(n, budget, progress=False))} for n in names]}
    (folder / "scene.json").write_text(json.dumps(scene, indent=1))
    source = SHARED / "real" / "val" / "annotations.json"
    coco = json.loads(source.read_text())
    kept = {c["id"] for c in coco["categories"] if c["name"] in names}
    coco["categories"] = [c for c in coco["categories"] if c["id"] in kept]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in kept]
    for image in coco["images"]:
        image["file_name"] = str(source.parent / image["file_name"])
    (folder / "val.json").write_text(json.dumps(coco))
    return folder / "scene.json", folder / "val.json"


def learn_psi(preset: str, scene: Path, val: Path, budget: Budget, seed: int, out_dir: Path) -> Psi:
    """psi as a job of method ``preset`` on ``scene`` with ``val`` as target leaves it: the product's
    run_optimization (its defaults, priors from the photos included, but final_images=0, so
    the loop only learns psi), rebuilt from the run's psi.json. A finished run is reused; an
    interrupted one resumes from its checkpoint."""
    if not (out_dir / "psi.json").is_file():
        loop = dict(budget.loop)
        if preset == "uniform":  # the starting psi: no outer iteration, no detector warm-up
            loop.update(outer_iterations=0, warmup_steps=0)
        config = OptimizeConfig(
            preset=preset, seed=seed, device="cpu", scene=SceneConfig(spec=str(scene)),
            targets=TargetsConfig(val=str(val)),
            budget=BudgetConfig(final_images=0, **{name: loop[name] for name in LOOP_BUDGET}),
            detector=DetectorSection(sample_images=0, image_size=loop["image_size"], warmup_steps=loop["warmup_steps"]))
        result = run_optimization(config, out_dir, progress_bar=False)
        if result.status != "completed":
            raise SystemExit(f"{out_dir}: the loop ended {result.status}")
    return psi_from_run(out_dir)


def psi_from_run(run_dir: Path) -> Psi:
    """The psi a loop run saved (psi.json: its PsiConfig and state), every part fixed."""
    saved = json.loads((run_dir / "psi.json").read_text())

    def tuples(value):  # JSON lists back to the config's tuples
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    psi = Psi(PsiConfig(**{k: tuples(v) for k, v in saved["psi_config"].items()}).frozen())
    psi.load_state_dict({k: torch.tensor(v) for k, v in saved["state"].items()})
    return psi


def render_seed(renderer: SceneRenderer, psi: Psi, names: list[str], budget: Budget, shape: tuple[int, int], seed: int,
                folder: Path) -> Path:
    """``budget.renders`` renders of ``shape`` (height, width) from ``psi`` in ``folder`` (kept
    once complete)."""
    if not (folder / "data.yaml").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        partial = folder.with_name(folder.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        render_dataset(renderer, psi, budget.renders, shape, partial, names, seed=seed, progress=False)
        partial.rename(folder)
    return folder


def first_renders(renders: Path, count: int, out_dir: Path) -> Path:
    """A YOLO folder of the first ``count`` images of ``renders`` (hard links)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for kind in ("images", "labels"):
        (out_dir / kind).mkdir(parents=True)
    for image in sorted((renders / "images").iterdir())[:count]:
        os.link(image, out_dir / "images" / image.name)
        os.link(renders / "labels" / f"{image.stem}.txt", out_dir / "labels" / f"{image.stem}.txt")
    shutil.copyfile(renders / "data.yaml", out_dir / "data.yaml")
    return out_dir


def run_arm(arm: str, data_dir: Path, names: list[str], test: LabelledSet, budget: Budget, seed: int,
            work: Path) -> dict:
    record = work / "result.json"
    if record.is_file():  # a finished arm of an interrupted run
        return json.loads(record.read_text())
    start = DetectorConfig(arch="yolov8n-cpu", class_names=names, image_size=budget.image_size, seed=seed)
    began = time.perf_counter()
    best = train_on_dataset(start, data_dir, budget.epochs, budget.image_size, work / "train", progress=False,
                            batch_size=budget.batch_size, device="cpu", seed=seed,
                            **{**TRAINER, "nbs": budget.batch_size})
    result = scores(load_detector(best), test, budget.image_size)
    result["train_seconds"] = round(time.perf_counter() - began, 1)
    print(f"seed {seed} {arm}: mAP50-95 {result['map50_95']:.3f} mAP50 {result['map50']:.3f} "
          f"AP50 {json.dumps({k: round(v, 3) for k, v in result['per_class_ap50'].items()})}", flush=True)
    shutil.rmtree(work / "train")  # checkpoints: a few MB per arm and seed
    write_json_atomic(record, result)
    return result


def summarise(runs: dict[str, list[dict]]) -> dict:
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {}
    for arm, results in runs.items():
        entry = {key: stats([r[key] for r in results]) for key in ("map50_95", "map50")}
        for key in ("per_class_ap50", "per_class_ap50_95"):
            entry[key] = {name: stats([r[key][name] for r in results]) for name in results[0][key]}
        summary[arm] = entry
    return summary


def paired_gains(runs: dict[str, list[dict]], presets: list[str]) -> str:
    """Per preset, its +real arm minus uniform+real in mAP50-95, seed by seed (the same photos,
    draws and training seed: the seed's noise common to both arms cancels), with the mean,
    stdev and how many seeds it won."""
    lines = []
    for preset in presets:
        gains = [a["map50_95"] - b["map50_95"] for a, b in zip(runs[f"{preset}+real"], runs["uniform+real"])]
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        lines.append(f"{preset}+real - uniform+real: {statistics.fmean(gains):+.3f} ± {spread:.3f} "
                     f"(won {sum(g > 0 for g in gains)} of {len(gains)} seeds: "
                     + ", ".join(f"{g:+.3f}" for g in gains) + ")")
    return "\n".join(lines)


def table(summary: dict, names: list[str]) -> str:
    def cell(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['stdev']:.3f}"

    lines = ["| arm | mAP50-95 | mAP50 | " + " | ".join(f"{n} AP50" for n in names) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for arm, entry in summary.items():
        per_class = [cell(entry["per_class_ap50"][n]) if n in entry["per_class_ap50"] else "-" for n in names]
        lines.append(f"| {arm} | {cell(entry['map50_95'])} | {cell(entry['map50'])} | " + " | ".join(per_class) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller images, renders, loop and epochs (<= 30 min)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override the budget's training epochs (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", choices=sorted(set(PRESETS) - {"uniform"}),
                        help=f"the presets whose learned psi are arms (default: the default, {DEFAULT_PRESET}; "
                             f"'uniform' is always an arm)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    if args.epochs:
        budget = replace(budget, epochs=args.epochs)
    mode = ("quick" if args.quick else "full") + (f"_e{args.epochs}" if args.epochs else "")
    began = time.perf_counter()

    splits = {s: load_coco(SHARED / "real" / s / "annotations.json") for s in ("train", "val", "test")}
    present = {int(c) for s in splits.values() for item in s.images for c in item.classes}
    names = [n for i, n in enumerate(splits["val"].class_names) if i in present]
    photos = [restrict(splits[s], names) for s in ("train", "val")]
    real = LabelledSet(photos[0].images + photos[1].images, names, SHARED / "real")
    test = restrict(splits["test"], names)

    # The renderer a job builds (run_optimization): the scene's assets on backgrounds harvested
    # from the validation photos, so that the loop's psi fits it (its background count).
    scene, val = job_inputs(names, assets.QUICK_BUDGET)
    renderer = job_renderer(OptimizeConfig(), read_scene_spec(scene), photos[1])
    fields, backgrounds = renderer.fields, renderer.backgrounds
    fixed = Psi.uniform(psi_config(OptimizeConfig(psi=PsiSettings(learnable=[])), fields, len(backgrounds)))
    print(f"classes {names}; {len(real)} photos, {len(test)} test photos, {len(backgrounds)} backgrounds; "
          f"assets ready after {time.perf_counter() - began:.0f} s", flush=True)

    presets = list(dict.fromkeys(args.presets or [DEFAULT_PRESET]))  # (a preset named twice: one arm)
    arms = [*BASE_ARMS, *presets, *(f"{p}+real" for p in presets)]
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    loop_seconds = []
    for seed in args.seeds:
        work = CACHE / f"{mode}_{budget.tag}" / f"seed{seed}"
        loop_began = time.perf_counter()
        psis = {"fixed": fixed, "uniform": learn_psi("uniform", scene, val, budget, seed, work / "loop_uniform")}
        for preset in presets:  # a loop folder per preset: a changed default never reuses another's psi
            psis[preset] = learn_psi(preset, scene, val, budget, seed, work / f"loop_{preset}")
        loop_seconds.append(round(time.perf_counter() - loop_began, 1))
        data = {"real": write_real_only(real, work / "data" / "real", budget.renders).data_dir}
        # Renders at the photos' aspect, longer side budget.image_size (as a job's final dataset).
        shape = final_image_shape(OptimizeConfig(final=FinalConfig(image_size=budget.image_size)), photos[1])
        renders = f"{shape[1]}x{shape[0]}px"
        kept = round(budget.renders * (1 - REAL_SHARE))
        for arm in psis:
            folder = work / "data" / f"renders_{arm}_{renders}_{budget.renders}"
            data[arm] = render_seed(renderer, psis[arm], names, budget, shape, seed, folder)
            if arm != "fixed":
                kept_renders = first_renders(data[arm], kept, work / "data" / f"{arm}_kept")
                data[f"{arm}+real"] = write_training_mix(kept_renders, real, work / "data" / f"{arm}_mix",
                                                         REAL_SHARE).data_dir
        for arm in arms:
            # Arms with renders name their size: scores of the earlier square renders are not reused.
            arm_dir = work / (arm if arm == "real" else f"{arm.replace('+', '_')}_{renders}")
            runs[arm].append(run_arm(arm, data[arm], names, test, budget, seed, arm_dir))

    summary = summarise(runs)
    out = RESULTS / mode
    write_json_atomic(out / "results.json", {"budget": asdict(budget), "trainer": TRAINER, "classes": names,
                                             "seeds": args.seeds, "runs": runs, "summary": summary,
                                             "loop_seconds": loop_seconds,
                                             "seconds": round(time.perf_counter() - began)})
    text = table(summary, names)
    (out / "table.md").write_text(text)
    print(text)

    def mean(arm: str, key: str = "map50_95") -> float:
        return summary[arm][key]["mean"]

    print(paired_gains(runs, presets))
    headline = DEFAULT_PRESET if DEFAULT_PRESET in presets else presets[0]
    drill = summary[f"{headline}+real"]["per_class_ap50"].get("power_drill", {"mean": float("nan")})["mean"]
    print(f"minutes={(time.perf_counter() - began) / 60:.1f}")
    print(f"preset={headline} real_gain_over_real_only={mean(f'{headline}+real') / max(mean('real'), 1e-9):.3f} "
          f"optimised_over_uniform={mean(f'{headline}+real') / max(mean('uniform+real'), 1e-9):.3f} "
          f"synthetic_only_map50={mean(headline, 'map50'):.3f} power_drill_ap50={drill:.3f}")


if __name__ == "__main__":
    main()
