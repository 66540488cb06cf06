"""How far cheaper hypergradients point from the exact one: psi's outer gradient under cheaper
settings against the product's settings with exact Hessian-vector products (``OptimizeConfig(
hessian_product="double-backward")``, the default before issue 27), on the same detector,
images and state, over a few outer iterations of a default job on the demo scene at 128 px
(after a warm-up).

Per iteration, the loop's ``outer_step_direction`` runs once per variant from the same state
(the reward baseline restored between them), and psi's gradient is compared with the
reference's by cosine similarity, whole and per learnable part, with the time each took. Then
the iteration goes on as the reference would (psi step, inner fine-tune), so later iterations
see a detector as a job would. Variants: ``finite-difference`` (hessian_product),
``head`` (hessian_layers 'head'), ``cg2`` and ``cg1``
(2 or 1 CG steps instead of 5), ``identity`` (no inverse Hessian). ``hvps`` is how many
Hessian-vector products the reference's CG made (it stops early on non-positive curvature).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hypergradient_direction.py --quick

Last line: ``cosine_<variant>=<mean over iterations> ... seconds_<variant>=<mean> ...``
(``seconds_reference`` too).

Measured 2026-12-06 (default mode: 5 iterations after 100 warm-up steps; 2 shared cores,
contended, 1 torch thread, so the seconds are noisy): ``cosine_finite-difference=0.957
cosine_head=0.262 cosine_cg2=1.000 cosine_cg1=0.895 cosine_identity=0.707``. Finite
differences gave 0.999, 1.000, 1.000, 0.999 and 0.786 (there CG's stopping point moved; the
azimuth part 0.90). The reference's CG made 3, 1, 2, 3 and 3 Hessian-vector products: it
always stopped on non-positive curvature by its third direction, so 2 steps gave exactly its
direction; the head-restricted Hessian's cosines ranged from -0.39 to 0.79 (the azimuth part
from -0.15 to 0.40). ``--quick`` (a detector warmed up for 40 steps only): finite differences
0.775 and 0.997 (the first: the exposure part at -0.19, the azimuth part at 0.99).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not benchmarks/, leads
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import optimizer.hessian as hessian_module  # noqa: E402
import optimizer.loop as loop_module  # noqa: E402
from detector.datasets import load_dataset  # noqa: E402
from optimizer.config import (  # noqa: E402
    BudgetConfig,
    DetectorSection,
    HypergradientConfig,
    OptimizeConfig,
    SceneConfig,
)
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig  # noqa: E402
from renderer.scene_spec import load_scene, read_scene_spec  # noqa: E402
from service.demo import render_target_set  # noqa: E402

VARIANTS = {"finite-difference": {"hessian_product": "finite-difference"}, "head": {"hessian_layers": "head"}, "cg2": {"inverse_hessian_steps": 2}, "cg1": {"inverse_hessian_steps": 1},
            "identity": {"inverse_hessian": "identity"}}


HVP_CALLS = [0]
"""Hessian-vector products made so far (counted by the wrapper main installs)."""


def count_hvps() -> None:
    make_hvp = hessian_module.exact_hvp  # the reference's products

    def counted(*args, **kwargs):
        hvp = make_hvp(*args, **kwargs)

        def call(v):
            HVP_CALLS[0] += 1
            return hvp(v)

        return call

    loop_module.exact_hvp = counted


def outer_gradient(loop, batch, noise, t: int, overrides: dict) -> tuple[dict[str, torch.Tensor], float]:
    """psi's outer gradient per part (flattened) under ``overrides``, and the seconds it took;
    leaves psi's .grad holding it."""
    saved = {name: getattr(loop.config, name) for name in overrides}
    for name, value in overrides.items():
        setattr(loop.config, name, value)
    loop.psi_optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loop.outer_step_direction(batch, noise, t)
    seconds = time.perf_counter() - start
    for name, value in saved.items():
        setattr(loop.config, name, value)
    parts = {part: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in tensors])
             for part, tensors in loop.psi.part_parameters().items()}
    return parts, seconds


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 iterations after 40 warm-up steps (else 5 after 100)")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    iterations, warmup = (2, 40) if args.quick else (5, 100)
    count_hvps()
    spec = read_scene_spec("demo")
    fields, backgrounds = load_scene(spec)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=spec.fov_deg), fields, backgrounds)
    totals: dict[str, list[float]] = {name: [] for name in VARIANTS}
    seconds: dict[str, list[float]] = {name: [] for name in ["reference", *VARIANTS]}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        val_set = load_dataset(render_target_set("demo", work / "val", 16, args.size) / "annotations.json")
        config = OptimizeConfig(scene=SceneConfig(spec="demo"),
                                detector=DetectorSection(image_size=args.size, warmup_steps=warmup),
                                budget=BudgetConfig(final_images=0),
                                hypergradient=HypergradientConfig(hessian_product="double-backward"))
        loop = loop_module._Loop(config, renderer, spec.class_names, val_set, None, work / "run", None, None, False)
        loop.out_dir.mkdir(parents=True, exist_ok=True)
        loop.initial_state()
        for t in range(iterations):
            noise = loop.psi.sample(config.budget.images_per_iteration, loop_module._generator(config.seed, t, "render"),
                                    loop.pose_group).noise
            batch = loop.render(noise, t)
            baseline = copy.deepcopy(loop.baseline)
            results = {}
            for name, overrides in VARIANTS.items():
                loop.baseline = copy.deepcopy(baseline)
                results[name] = outer_gradient(loop, batch, noise, t, overrides)
            loop.baseline = baseline
            before = HVP_CALLS[0]
            reference, reference_s = outer_gradient(loop, batch, noise, t, {})  # psi's .grad holds it for the step
            seconds["reference"].append(reference_s)
            whole = torch.cat(list(reference.values()))
            line = [f"iteration={t}", f"reference_s={reference_s:.2f} hvps={HVP_CALLS[0] - before}"]
            for name, (parts, took) in results.items():
                totals[name].append(cosine(torch.cat(list(parts.values())), whole))
                seconds[name].append(took)
                line.append(f"{name}: cos={totals[name][-1]:.3f} s={took:.2f} "
                            + " ".join(f"{part}={cosine(parts[part], reference[part]):.2f}" for part in reference))
            print(" | ".join(line), flush=True)
            loop.step_psi(t)
            loop.finetune_state = loop.train(loop.detector, batch, config.budget.inner_steps, loop.finetune_state, t)
    print(" ".join(f"cosine_{name}={sum(v) / len(v):.3f}" for name, v in totals.items()) + " "
          + " ".join(f"seconds_{name}={sum(v) / len(v):.2f}" for name, v in seconds.items()))


if __name__ == "__main__":
    main()
