"""Does the per-image reward of the score-function estimator tell the target's azimuth bins apart?

The pose shift's setting (benchmarks/shift.py: six YCB classes, mesh-rendered target validation
set with azimuths from bins 1 and 2 only). The loop's detector is warmed up on uniform psi for
``--warmup`` steps (run_loop with no outer iteration), then ``--groups`` scenes are drawn from
uniform psi and each is rendered at all 8 azimuth bins with everything else equal (class,
elevation, distance, lighting, background, in-bin offset aside). Rewards are compared within
each group, so only the azimuth differs:

- ``dot``: ``g_val . dl_i/dtheta`` (the identity-Hessian hypergradient's per-image term);
- ``cosine``: the same divided by ``|dl_i/dtheta|`` (``--cosine``; one backward pass per image);
- ``class_dot`` / ``class_cosine`` (``--class-matched``): against the validation gradient of
  the image's own class only;
- ``balanced_dot`` / ``balanced_cosine`` (``--class-balanced``): against the sum of the
  classes' validation gradients, each scaled to unit length, so that the classes the detector
  does worst on do not dominate g_val (docs/findings.md, finding 23);
- ``<group>_dot`` / ``<group>_cosine`` (``--layer-groups``): over one LAYER_GROUPS entry's
  parameters only;
- ``*_rank``: the rank of the reward inside its group.

``--mixture`` asks whether the ``mixture`` alignment objective (the cosine between u and psi's
mean unit training gradient, optimizer.estimators.mixture_alignment_gradient; the
classification branch left out, as ``alignment_ignores`` does) has its maximum over the bins
at the target: it prints that objective at uniform psi, at the target, at each single bin, and
at the bins that maximise it (from all scenes and from each half of them), with those bins'
total-variation distance to the target. The mean cosine's maximiser is always a single bin.

For each: the target advantage (mean centred reward of bins 1-2 minus that of the other six,
per group, in units of the reward's spread) with its t statistic over groups, the mean centred
reward per bin, and the advantage per class. BatchNorm uses batch statistics (chunks of 64
images that mix groups), as in the loop.

    python benchmarks/alignment.py [--warmup 60 200] [--groups 48] [--cosine]

``--appearance`` asks the same of the ``appearance`` objective (optimizer.appearance), which
needs no gradient: per image its crop's mean kernel to the validation crops of its class
(``appearance_similarity``), and the bins that minimise the crops' MMD to the validation crops
(from all scenes and from each half), with their TV to the target; and, for comparison, the
same for the detector's box-pooled features (the Detect head's three inputs, 2x2 roi_align per
level): ``feature_similarity``.

``--inverse-hessian cg`` (or ``neumann``) measures the same with u = (H + damping)^-1 g_val
as the loop computes it, instead of g_val itself.

Last line: ``alignment_t_warmup<W>[_<method>]=<t>`` for the dot reward, per warm-up and u.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # not this folder: benchmarks/detector.py would shadow the detector package
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))

import torch  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

from benchmarks.assets import QUICK_BUDGET, SHIFT_OBJECTS, load_assets  # noqa: E402
from benchmarks.shift import BACKGROUNDS, QUICK, SHIFTS, run_config, target_sets  # noqa: E402
from detector.datasets import LabelledSet  # noqa: E402
from detector.losses import (  # noqa: E402
    BatchNormMode,
    batch_norm_mode,
    detection_loss,
    per_image_gradient_dot,
    trainable_parameters,
)
from detector.model import DetectorConfig, build_detector  # noqa: E402
from detector.targets import ImageBatch  # noqa: E402
from optimizer.appearance import AppearanceStatistics, crop_bandwidth, gaussian_kernel, object_crops  # noqa: E402
from optimizer.baselines import azimuth_total_variation, initial_psi, psi_config  # noqa: E402
from optimizer.checkpoint import load_checkpoint  # noqa: E402
from optimizer.config import OptimizeConfig  # noqa: E402
from optimizer.estimators import (  # noqa: E402
    mixture_alignment_gradient,
    mixture_cell_sums,
    per_sample_flat_gradients,
    per_sample_gradient_norms,
)
from optimizer.hypergradient import dot  # noqa: E402
from optimizer.loop import (  # noqa: E402
    HYPERGRADIENT_BN,
    inverse_hessian_direction,
    run_loop,
    validation_loss_and_gradient,
)
from renderer.backgrounds import BackgroundSet  # noqa: E402
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig  # noqa: E402

BINS = 8
TARGET_BINS = torch.tensor(SHIFTS["pose"]["target"]["azimuth_bin_probs"], dtype=torch.bool)


def pose_setting(seed: int, budget) -> tuple[SceneRenderer, LabelledSet, LabelledSet, OptimizeConfig]:
    """The pose shift's renderer, validation and test sets, and its neural-sim run config."""
    backgrounds = BackgroundSet.from_folder(BACKGROUNDS, max_side=256)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=40.0, samples_per_ray=64),
                             load_assets(SHIFT_OBJECTS, QUICK_BUDGET), backgrounds)
    val_set, test_set = target_sets("pose", budget, backgrounds)
    return renderer, val_set, test_set, run_config("pose", "neural-sim-both", seed, budget)


def warmed_up_detector(config, renderer, val_set, warmup: int, warmup_cache: Path | None = None):
    """The loop's detector after ``warmup`` steps on uniform psi (its checkpoint's weights);
    from ``warmup_cache`` (as run_loop keeps it) when that holds the same warm-up."""
    config = dataclasses.replace(config,
                                 detector=dataclasses.replace(config.detector, warmup_steps=warmup),
                                 budget=dataclasses.replace(config.budget, outer_iterations=0, final_images=0))
    with tempfile.TemporaryDirectory() as folder:
        run_loop(config, renderer, list(SHIFT_OBJECTS), val_set, None, Path(folder), warmup_cache=warmup_cache)
        state = load_checkpoint(Path(folder))
    model = build_detector(DetectorConfig(arch=config.detector.arch, class_names=list(SHIFT_OBJECTS),
                                          image_size=config.detector.image_size, seed=config.seed))
    model.load_state_dict(state.detector)
    return model


def enumerated_batch(config, renderer, groups: int, seed: int) -> tuple[ImageBatch, torch.Tensor]:
    """``groups`` scenes from uniform psi, each at all 8 bins (consecutive rows); their classes."""
    psi = initial_psi(config, psi_config(config, renderer.fields, len(renderer.backgrounds)))
    noise = psi.sample(groups * BINS, seed, pose_group=BINS).noise
    noise.azimuth_bin[:, 0] = torch.arange(BINS).repeat(groups)
    with torch.no_grad():
        out = renderer.render(psi.replay(noise), config.detector.image_size)
    return ImageBatch(out.rgb.clamp(0, 1), out.boxes, out.classes, out.keep), noise.class_ids[:, 0]


def class_validation_gradients(model, val_batch: ImageBatch) -> list[list[torch.Tensor]]:
    """Per class: the validation loss gradient over the validation images of that class
    (one object per image)."""
    gradients = []
    for class_id in range(len(SHIFT_OBJECTS)):
        rows = (val_batch.classes[:, 0] == class_id).nonzero()[:, 0]
        part = val_batch.index(rows)
        gradients.append(validation_loss_and_gradient(model, part, 64, True)[1])
    return gradients


def hypergradient_direction(model, config: OptimizeConfig, val_gradient: list[torch.Tensor], batch: ImageBatch,
                            method: str, seed: int) -> list[torch.Tensor]:
    """The loop's u (inverse_hessian_direction, by ``method``) with the Hessian of the training
    loss on images_per_iteration rows of ``batch`` (mixed groups, as psi would draw them)."""
    if method == "identity":
        return val_gradient
    rows = torch.randperm(batch.images.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    part = batch.index(rows[:config.budget.images_per_iteration])
    solver = dataclasses.replace(config.hypergradient, inverse_hessian=method)
    u, _, fell_back = inverse_hessian_direction(dataclasses.replace(config, hypergradient=solver), model,
                                                part.images, part.targets(), val_gradient)
    print(f"  u by {method}: {'fell back to the validation gradient' if fell_back else 'solved'}", flush=True)
    return u


def rewards(model, config: OptimizeConfig, batch: ImageBatch, val_batch: ImageBatch, cosine: bool,
            class_matched: bool, class_balanced: bool, inverse_hessian: str, seed: int) -> dict[str, torch.Tensor]:
    _, val_gradient = validation_loss_and_gradient(model, val_batch, 64, True)
    val_gradient = hypergradient_direction(model, config, val_gradient, batch, inverse_hessian, seed)
    by_class = class_validation_gradients(model, val_batch) if class_matched or class_balanced else []
    class_norms = [dot(gradient, gradient).sqrt() for gradient in by_class]
    # Every class's validation gradient at unit length, summed: no class's errors outweigh the others'.
    balanced = ([sum(gradient[i] / norm for gradient, norm in zip(by_class, class_norms))
                 for i in range(len(val_gradient))] if class_balanced else None)
    count = batch.images.shape[0]
    dots, norms, matched, balanced_dots = torch.zeros(count), torch.zeros(count), torch.zeros(count), torch.zeros(count)
    # Chunks that mix groups: BatchNorm statistics then differ from one member to another as
    # they would in a batch drawn from psi.
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    for rows in order.split(64):
        part = batch.index(rows)
        dots[rows] = per_image_gradient_dot(model, part.images, part.targets(), val_gradient, HYPERGRADIENT_BN).detach()
        if balanced is not None:
            balanced_dots[rows] = per_image_gradient_dot(model, part.images, part.targets(), balanced,
                                                         HYPERGRADIENT_BN).detach()
        for class_id, gradient in enumerate(by_class if class_matched else []):
            own = part.classes[:, 0] == class_id
            if bool(own.any()):
                own_dots = per_image_gradient_dot(model, part.images, part.targets(), gradient, HYPERGRADIENT_BN).detach()
                matched[rows[own]] = own_dots[own] / class_norms[class_id]
        if cosine:
            losses = detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN, reduction="none")
            norms[rows] = per_sample_gradient_norms(losses, trainable_parameters(model))
    found = {"dot": dots}
    if class_balanced:
        found["balanced_dot"] = balanced_dots
    if class_matched:
        found["class_dot"] = matched
    if cosine:
        safe_norms = norms.clamp_min(torch.finfo(norms.dtype).tiny)
        for name in list(found):
            found[name.removesuffix("dot") + "cosine"] = found[name] / safe_norms
    for name, values in list(found.items()):
        found[f"{name}_rank"] = values.reshape(-1, BINS).argsort(1).argsort(1).float().reshape(-1)
    return found


LAYER_GROUPS = {
    "backbone": tuple(f"model.{index}." for index in range(0, 10)),
    "neck": tuple(f"model.{index}." for index in range(10, 22)),
    "box_head": ("model.22.cv2.",),
    "class_head": ("model.22.cv3.",),
}
"""Parameter groups of YOLOv8n-cpu as parameter-name prefixes (as OptimizeConfig.outer.alignment_ignores
takes them): the backbone, the neck (FPN/PAN), and the Detect head's box-regression (cv2) and
classification (cv3) branches."""


def layer_group(name: str) -> str | None:
    """The LAYER_GROUPS entry of the parameter ``name``, None if none."""
    return next((group for group, prefixes in LAYER_GROUPS.items() if name.startswith(prefixes)), None)


def mixed_chunk_losses(model, batch: ImageBatch, seed: int):
    """(rows, their per-image losses) in chunks of 64 that mix groups (as in rewards())."""
    order = torch.randperm(batch.images.shape[0], generator=torch.Generator().manual_seed(seed))
    for rows in order.split(64):
        part = batch.index(rows)
        yield rows, detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN, reduction="none")


def layer_group_rewards(model, batch: ImageBatch, val_gradient: list[torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Per LAYER_GROUPS entry: each image's dot product and cosine between its loss gradient and
    the validation gradient over that group's parameters only."""
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    parameters = trainable_parameters(model)
    member = [layer_group(name) for name in names]
    count = batch.images.shape[0]
    dots = {group: torch.zeros(count) for group in LAYER_GROUPS}
    norms = {group: torch.zeros(count) for group in LAYER_GROUPS}
    val_norms = {group: sum(float((v * v).sum()) for v, m in zip(val_gradient, member) if m == group) ** 0.5
                 for group in LAYER_GROUPS}
    for rows, losses in mixed_chunk_losses(model, batch, seed):
        for row, loss in zip(rows.tolist(), losses):
            grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
            for g, v, group in zip(grads, val_gradient, member):
                if g is not None and group is not None:
                    dots[group][row] += float((g * v).sum())
                    norms[group][row] += float((g * g).sum())
    found = {}
    for group in LAYER_GROUPS:
        found[f"{group}_dot"] = dots[group]
        found[f"{group}_cosine"] = dots[group] / (norms[group].sqrt() * val_norms[group]).clamp_min(1e-30)
    return found


def mixture_inputs(model, batch: ImageBatch, val_batch: ImageBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's cosine to the validation gradient and the Gram matrix of the images' loss
    gradients, both over the parameters outside the classification branch."""
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    kept = [layer_group(name) != "class_head" for name in names]
    parameters = [p for p, keep in zip(trainable_parameters(model), kept) if keep]
    _, val_gradient = validation_loss_and_gradient(model, val_batch, 64, True)
    u = [g if keep else torch.zeros_like(g) for g, keep in zip(val_gradient, kept)]
    u_norm = dot(u, u).sqrt()
    count = batch.images.shape[0]
    flat = torch.cat([g.reshape(-1) for g, keep in zip(u, kept) if keep])
    stacked = torch.zeros(count, flat.numel())  # images x parameters: 384 x 0.8M floats, 1.2 GB
    for rows, losses in mixed_chunk_losses(model, batch, seed):
        stacked[rows] = per_sample_flat_gradients(losses, parameters)
    cosines = stacked @ flat / (stacked.norm(dim=1) * u_norm).clamp_min(torch.finfo(flat.dtype).tiny)
    return cosines, stacked @ stacked.T


def mixture_report(cosines: torch.Tensor, gram: torch.Tensor, groups: int) -> dict:
    """The mixture objective at uniform psi, the target, each single bin and its maximiser (over
    all scenes and over each half of them)."""
    bins = torch.arange(BINS).repeat(groups)
    scenes = torch.arange(groups).repeat_interleave(BINS)

    def statistics(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aligned, overlap, scene_count, pairs = mixture_cell_sums(cosines[rows], gram[rows][:, rows], bins[rows],
                                                                 scenes[rows], BINS)
        return aligned / scene_count, overlap / pairs

    def objective(logits: torch.Tensor, rows: torch.Tensor) -> float:
        return mixture_alignment_gradient(logits[None], *statistics(rows))[1]["mixture_cosine"]

    def maximiser(rows: torch.Tensor) -> torch.Tensor:
        means = statistics(rows)
        logits = torch.zeros(BINS, requires_grad=True)
        optimiser = torch.optim.Adam([logits], lr=0.05)
        for _ in range(2000):
            logits.grad = mixture_alignment_gradient(logits.detach()[None], *means)[0][0]
            optimiser.step()
        return logits.detach()

    everything = torch.arange(groups * BINS)
    halves = [everything[scenes < groups // 2], everything[scenes >= groups // 2]]
    target = TARGET_BINS.float() / TARGET_BINS.sum()
    report = {"uniform": objective(torch.zeros(BINS), everything),
              "target": objective(target.clamp_min(1e-6).log(), everything),
              "single_bin": [round(objective(torch.full((BINS,), -20.0).index_fill(0, torch.tensor([k]), 0.0),
                                             everything), 4) for k in range(BINS)]}
    for name, rows in (("all", everything), ("first_half", halves[0]), ("second_half", halves[1])):
        best = maximiser(rows)
        probs = best.softmax(0)
        report[f"best_{name}"] = {"probs": [round(float(x), 3) for x in probs], "tv": azimuth_total_variation(probs, target),
                                  "objective": objective(best, rows)}
    return report


def box_features(model, batch: ImageBatch) -> torch.Tensor:
    """[B, D] the detector's features of each image's first object: the Detect head's inputs
    roi-aligned to its box (2x2 per level), each level at unit length, BatchNorm with running
    statistics (so that an image's features do not depend on its batch)."""
    captured = []
    handle = model.model[-1].register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    first = batch.keep.float().argmax(1)
    rows = torch.arange(batch.images.shape[0])
    boxes = torch.cat([rows[:, None].float(), batch.boxes[rows, first].float()], 1)
    levels = []
    try:
        with torch.no_grad(), batch_norm_mode(model, BatchNormMode.RUNNING):
            for chunk in rows.split(64):
                captured.clear()
                model(batch.images[chunk])
                part = boxes[chunk].clone()
                part[:, 0] -= int(chunk[0])
                levels.append(torch.cat([
                    torch.nn.functional.normalize(roi_align(level, part, 2, spatial_scale=1.0 / float(stride),
                                                            sampling_ratio=2, aligned=True).flatten(1), dim=1)
                    for level, stride in zip(captured[0], model.stride)], 1))
    finally:
        handle.remove()
    return torch.cat(levels) / len(model.stride) ** 0.5


def appearance_report(features: torch.Tensor, classes: torch.Tensor, val_features: torch.Tensor,
                      val_classes: torch.Tensor, groups: int) -> tuple[torch.Tensor, dict]:
    """Each image's mean kernel to its class's validation objects (the bandwidth as the
    'appearance' objective sets it), and the bins, shared by the classes, that minimise the
    objective's MMD from all scenes and from each half of them."""
    bins = torch.arange(BINS).repeat(groups)
    scenes = torch.arange(groups).repeat_interleave(BINS)
    bandwidth = crop_bandwidth(val_features)
    same_class = (classes[:, None] == val_classes[None, :]).float()
    similarity = (gaussian_kernel(features, val_features, bandwidth) * same_class).sum(1) / same_class.sum(1).clamp_min(1)
    target = TARGET_BINS.float() / TARGET_BINS.sum()
    shape = (len(SHIFT_OBJECTS), BINS)
    report = {"bandwidth": bandwidth}
    everything = torch.arange(groups * BINS)
    for name, rows in (("all", everything), ("first_half", everything[scenes < groups // 2]),
                       ("second_half", everything[scenes >= groups // 2])):
        statistics = AppearanceStatistics(bandwidth=bandwidth)
        statistics.update(features[rows], classes[rows], bins[rows], scenes[rows])
        shared = torch.zeros(BINS, requires_grad=True)  # one distribution for every class, as in the shift benchmark
        optimiser = torch.optim.Adam([shared], lr=0.05)
        for _ in range(2000):
            gradient, found = statistics.gradient(shared.detach().expand(shape), val_features, val_classes)
            shared.grad = gradient.sum(0)
            optimiser.step()
        probs = shared.detach().softmax(0)
        report[f"best_{name}"] = {"probs": [round(float(x), 3) for x in probs],
                                  "tv": azimuth_total_variation(probs, target), "mmd": found["appearance_mmd"]}
    return similarity, report


def summary(values: torch.Tensor, classes: torch.Tensor) -> dict:
    by_group = values.reshape(-1, BINS)
    centred = by_group - by_group.mean(1, keepdim=True)
    centred = centred / centred.std()
    advantage = centred[:, TARGET_BINS].mean(1) - centred[:, ~TARGET_BINS].mean(1)
    group_classes = classes.reshape(-1, BINS)[:, 0]
    return {
        "advantage": float(advantage.mean()),
        "t": float(advantage.mean() / (advantage.std() / advantage.numel() ** 0.5)),
        "per_bin": [round(float(x), 3) for x in centred.mean(0)],
        "per_class": {name: round(float(advantage[group_classes == c].mean()), 3)
                      for c, name in enumerate(SHIFT_OBJECTS) if bool((group_classes == c).any())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", nargs="+", type=int, default=[60, 200], help="detector steps before measuring")
    parser.add_argument("--groups", type=int, default=48, help="scenes, each rendered at all 8 bins")
    parser.add_argument("--cosine", action="store_true", help="also the cosine reward (slower)")
    parser.add_argument("--inverse-hessian", nargs="+", choices=["identity", "neumann", "cg"], default=["identity"],
                        help="u = (H + damping)^-1 g_val as the loop computes it (its default steps, damping, "
                             "scale; the training images' Hessian), one measurement each")
    parser.add_argument("--class-matched", action="store_true",
                        help="also rewards against the validation gradient of the image's own class only")
    parser.add_argument("--class-balanced", action="store_true",
                        help="also rewards against the sum of the classes' validation gradients, each at unit length")
    parser.add_argument("--layer-groups", action="store_true",
                        help="also the dot and cosine over each of LAYER_GROUPS' parameters only")
    parser.add_argument("--mixture", action="store_true",
                        help="also the mixture alignment objective's values and maximiser over the bins")
    parser.add_argument("--appearance", action="store_true",
                        help="also the appearance objective's per-image similarity and MMD minimiser (and the "
                             "same for the detector's box-pooled features)")
    parser.add_argument("--warmup-cache", type=Path, default=None,
                        help="a run_loop warm-up cache (the shift benchmark's: results/shift/<mode>/warmups/<assets>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    renderer, val_set, _, config = pose_setting(args.seed, QUICK)
    val_batch = val_set.batch(config.detector.image_size)
    batch, classes = enumerated_batch(config, renderer, args.groups, args.seed)
    results = {}
    for warmup in args.warmup:
        began = time.perf_counter()
        model = warmed_up_detector(config, renderer, val_set, warmup, args.warmup_cache)
        for method in args.inverse_hessian:
            found = rewards(model, config, batch, val_batch, args.cosine, args.class_matched, args.class_balanced,
                            method, args.seed)
            if args.layer_groups:
                _, val_gradient = validation_loss_and_gradient(model, val_batch, 64, True)
                found.update(layer_group_rewards(model, batch, val_gradient, args.seed))
            if args.mixture and method == "identity":
                report = mixture_report(*mixture_inputs(model, batch, val_batch, args.seed), args.groups)
                print(f"warm-up {warmup} steps, mixture objective (classification branch left out): "
                      f"uniform {report['uniform']:.4f}, target {report['target']:.4f}, single bins "
                      + " ".join(f"{x:.4f}" for x in report["single_bin"]), flush=True)
                for name in ("all", "first_half", "second_half"):
                    best = report[f"best_{name}"]
                    print(f"  maximiser ({name} scenes): probs {best['probs']}, TV to the target {best['tv']:.3f}, "
                          f"objective {best['objective']:.4f}", flush=True)
            if args.appearance and method == "identity":
                for name, extract in (("appearance", lambda b: object_crops(b.images, b.boxes, b.keep)[0]),
                                      ("feature", lambda b: box_features(model, b))):
                    similarity, report = appearance_report(extract(batch), classes, extract(val_batch),
                                                           val_batch.classes[:, 0], args.groups)
                    found[f"{name}_similarity"] = similarity
                    print(f"warm-up {warmup} steps, {name} MMD (bandwidth {report['bandwidth']:.3f}):", flush=True)
                    for half in ("all", "first_half", "second_half"):
                        best = report[f"best_{half}"]
                        print(f"  minimiser ({half} scenes): probs {best['probs']}, TV to the target "
                              f"{best['tv']:.3f}, MMD {best['mmd']:.4f}", flush=True)
            print(f"warm-up {warmup} steps, u by {method} ({time.perf_counter() - began:.0f} s), "
                  f"{args.groups} groups x {BINS} bins:")
            for name, values in found.items():
                row = summary(values, classes)
                results[(warmup, method, name)] = row
                print(f"  {name:12s} target advantage {row['advantage']:+.3f} (t = {row['t']:+.2f}); per bin "
                      + " ".join(f"{x:+.2f}" for x in row["per_bin"]) + f"; per class {row['per_class']}", flush=True)
    print(" ".join(f"alignment_t_warmup{w}{'' if m == 'identity' else '_' + m}={results[(w, m, 'dot')]['t']:.2f}"
                   for w in args.warmup for m in args.inverse_hessian))


if __name__ == "__main__":
    main()
