"""Which azimuth distribution does the loop's own objective prefer on the pose shift?

The pose shift's TV target assumes that the target's bins (1 and 2) are what the outer
objective (the detector's validation loss / mAP after training on psi's images) rewards most.
This measures that objective directly, without any gradient estimator: the loop's detector is
warmed up on uniform psi (as in benchmarks/shift.py), then copies of it are fine-tuned on fresh
images from each candidate distribution (uniform, the target's bins 1-2, their twins 180 degrees
away, bins 5-6, and each single bin) and scored on the mesh-rendered validation and test sets.
Every candidate draws the same scenes apart from the azimuth (the same generator seeds).

    python benchmarks/pose_objective.py [--warmup 200] [--rounds 3] [--repeats 2]

Last line: ``target_over_twins_val_map=<x> target_over_uniform_val_map=<y>`` (ratios of the mean
validation mAP50-95 after fine-tuning).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # not this folder: benchmarks/detector.py would shadow the detector package
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))

import torch  # noqa: E402

from benchmarks.alignment import pose_setting, warmed_up_detector  # noqa: E402
from benchmarks.shift import FULL  # noqa: E402
from detector.evaluate import evaluate  # noqa: E402
from detector.losses import BatchNormMode  # noqa: E402
from detector.targets import ImageBatch  # noqa: E402
from detector.train import finetune  # noqa: E402
from optimizer.baselines import psi_config  # noqa: E402
from optimizer.loop import validation_loss_and_gradient  # noqa: E402
from optimizer.psi import Psi  # noqa: E402

BINS = 8


def candidates() -> dict[str, list[float]]:
    """Name -> azimuth bin probabilities."""
    found = {"uniform": [1.0] * BINS, "target 1-2": [0, 1, 1, 0, 0, 0, 0, 0], "twins 5-6": [0, 0, 0, 0, 0, 1, 1, 0]}
    for k in range(BINS):
        found[f"bin {k}"] = [float(j == k) for j in range(BINS)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=200, help="detector steps on uniform psi first (the shift's)")
    parser.add_argument("--rounds", type=int, default=3, help="fine-tuning rounds of inner_steps steps on fresh images")
    parser.add_argument("--repeats", type=int, default=2, help="independent image draws per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    renderer, val_set, test_set, config = pose_setting(args.seed, FULL)
    val_batch = val_set.batch(config.detector.image_size)
    began = time.perf_counter()
    warmed = warmed_up_detector(config, renderer, val_set, args.warmup)
    print(f"warm-up {args.warmup} steps: {time.perf_counter() - began:.0f} s", flush=True)
    base_config = psi_config(config, renderer.fields, len(renderer.backgrounds))

    results: dict[str, dict[str, list[float]]] = {}
    for name, probs in candidates().items():
        psi = Psi.from_target(base_config, azimuth_bin_probs=probs)
        scores = {"val_loss": [], "val_map": [], "test_map": []}
        for repeat in range(args.repeats):
            model = copy.deepcopy(warmed)
            state = None
            for round_index in range(args.rounds):
                seed = 10_000 * args.seed + 100 * repeat + round_index
                noise = psi.sample(config.budget.images_per_iteration, torch.Generator().manual_seed(seed)).noise
                with torch.no_grad():
                    out = renderer.render(psi.replay(noise), config.detector.image_size)
                batch = ImageBatch(out.rgb.clamp(0, 1), out.boxes, out.classes, out.keep)
                state = finetune(model, batch.images, batch.targets(), config.budget.inner_steps,
                                 config.detector.inner_learning_rate,
                                 BatchNormMode.UPDATE, optimizer_name=config.detector.inner_optimizer,
                                 generator=torch.Generator().manual_seed(seed), optimizer_state=state, progress=False)
            scores["val_loss"].append(validation_loss_and_gradient(model, val_batch, 64, False)[0])
            scores["val_map"].append(evaluate(model, val_set, config.detector.image_size, progress=False).map50_95)
            scores["test_map"].append(evaluate(model, test_set, config.detector.image_size, progress=False).map50_95)
        results[name] = scores
        print(f"{name:11s} " + " ".join(f"{k} {statistics.fmean(v):.4f} (+- {statistics.pstdev(v):.4f})"
                                        for k, v in scores.items()), flush=True)

    def mean_val_map(name: str) -> float:
        return statistics.fmean(results[name]["val_map"])

    single_bins = [n for n in results if n.startswith("bin ")]
    by_loss = sorted(single_bins, key=lambda n: statistics.fmean(results[n]["val_loss"]))
    print("single bins by validation loss, best first: " + ", ".join(by_loss))
    print("single bins by validation mAP50-95, best first: " + ", ".join(sorted(single_bins, key=mean_val_map, reverse=True)))
    print(f"target_over_twins_val_map={mean_val_map('target 1-2') / mean_val_map('twins 5-6'):.3f} "
          f"target_over_uniform_val_map={mean_val_map('target 1-2') / mean_val_map('uniform'):.3f}")


if __name__ == "__main__":
    main()
