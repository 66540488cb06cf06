"""Which scene defaults help on real photos? Scored on the user's own photos, never on test/.

For each variant of a job's defaults (resting poses, several objects per image), the starting
psi a job derives from ``val/`` (method 'uniform': no loop), ``Budget.renders`` renders from it
with the renderer such a job builds, the same detector and training as benchmarks/real.py, and
its mAP on ``train/`` + ``val/`` (the labelled photos a user brings; ``val/`` also gave the
priors and the harvested backgrounds, the same for every variant). ``test/`` is not read.

    python benchmarks/real_defaults.py [--seeds 0] [--variants default upright single]

Last line: ``<variant>_map50_95=... ...``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import benchmarks.real as real  # noqa: E402  (its budget, assets, training and scoring)
import torch  # noqa: E402

from detector.datasets import LabelledSet  # noqa: E402
from optimizer.config import FinalConfig, OptimizeConfig, merged  # noqa: E402
from optimizer.final_size import final_image_shape  # noqa: E402
from optimizer.loop import job_renderer, run_optimization  # noqa: E402
from renderer.scene_spec import read_scene_spec  # noqa: E402

VARIANTS = {
    "default": {},  # as measured first: resting poses with canonical_pose_share 0.5, several objects
    "upright": {"scene": {"resting_poses": False}},
    "single": {"psi": {"initial": {"max_objects": 1}}},
    "upright_single": {"scene": {"resting_poses": False}, "psi": {"initial": {"max_objects": 1}}},
    "standing": {"scene": {"canonical_pose_share": 1.0}},
    "standing_single": {"scene": {"canonical_pose_share": 1.0}, "psi": {"initial": {"max_objects": 1}}},
    "mostly_standing_single": {"scene": {"canonical_pose_share": 0.8}, "psi": {"initial": {"max_objects": 1}}},
}
"""Job settings (nested, as OptimizeConfig.from_dict reads them) on top of the defaults (a
user's psi override wins over the priors)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = real.QUICK
    splits = {s: real.load_coco(real.SHARED / "real" / s / "annotations.json") for s in ("train", "val")}
    present = {int(c) for s in splits.values() for item in s.images for c in item.classes}
    names = [n for i, n in enumerate(splits["val"].class_names) if i in present]
    train, val = (real.restrict(splits[s], names) for s in ("train", "val"))
    photos = LabelledSet(train.images + val.images, names, real.SHARED / "real")
    scene, val_json = real.job_inputs(names, real.assets.QUICK_BUDGET)
    out = real.CACHE / f"defaults_{budget.tag}"
    scores: dict[str, list[float]] = {}
    for seed in args.seeds:
        for variant in args.variants:
            work = out / f"seed{seed}" / variant
            loop = dict(budget.loop)
            settings = {"preset": "uniform", "seed": seed, "device": "cpu", "scene": {"spec": str(scene)},
                        "targets": {"val": str(val_json)},
                        "budget": {**{name: loop[name] for name in real.LOOP_BUDGET}, "outer_iterations": 0,
                                   "final_images": 0},
                        "detector": {"image_size": loop["image_size"], "warmup_steps": 0, "sample_images": 0}}
            config = OptimizeConfig.from_dict(merged(settings, VARIANTS[variant]))
            if not (work / "loop" / "psi.json").is_file():
                run_optimization(config, work / "loop", progress_bar=False)
            psi = real.psi_from_run(work / "loop")
            renderer = job_renderer(config, read_scene_spec(scene), val)
            shape = final_image_shape(OptimizeConfig(final=FinalConfig(image_size=budget.image_size)), val)
            data = real.render_seed(renderer, psi, names, budget, shape, seed, work / "renders")
            result = real.run_arm(variant, data, names, photos, budget, seed, work / "arm")
            scores.setdefault(variant, []).append(result["map50_95"])
    (out / "results.json").write_text(json.dumps(scores, indent=1))
    print(" ".join(f"{v}_map50_95={statistics.fmean(s):.3f}" for v, s in scores.items()))


if __name__ == "__main__":
    main()
