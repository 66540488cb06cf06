"""Loop-cost benchmark: one outer iteration of a closed-loop job, stage by stage, at 128 and 320 px.

The job is the product's default neural-sim job (``OptimizeConfig()``: estimator 'both', CG
with 5 steps, K = 32 images, 20 inner AdamW steps) on the bundled demo scene, its validation
set 16 images rendered from the demo's shifted psi (service.demo). The iteration is the loop's
own (``optimizer.loop._Loop.iteration`` with its neural-sim strategy); the benchmark only wraps
the stages it calls with timers, so nothing it measures behaves differently from a job:

- render: the K images drawn from psi (no gradient);
- hypergradient: ``NeuralSim.outer_step_direction``, i.e. the validation gradient (``val_gradient``),
  the training gradient's graph and the inverse-Hessian solve (``inverse_hessian``; ``hvp`` is
  one of its products), the mixed derivative with the per-image alignments
  (``mixed_and_alignment``), the pathwise re-render and its backward through the renderer (the
  rest; ``pathwise`` is the backward alone);
- psi step, inner fine-tune (``inner_steps`` steps), validation loss and mAP.

Each size runs one iteration to warm up (``--quick``: none) and times the next. Last line:
``outer_iteration_s_128=... outer_iteration_s_320=... hypergradient_over_finetune=...
hvp_over_train_step=...``, the two ratios at 128 px (one HVP of the solve over one inner
training step on the same K images). ``--hessian`` and ``--product`` pick
OptimizeConfig.hypergradient.hessian_layers and hessian_product, ``--preset`` the preset (the
``appearance`` preset takes no Hessian products).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loop_cost.py --quick

Measured 2026-12-06, 2 shared cores (contended: load about 4), 1 torch thread, full mode:

- default (finite-difference products): ``outer_iteration_s_128=12.6 outer_iteration_s_320=54.8
  hypergradient_over_finetune=0.50 hvp_over_train_step=0.90`` (at 320 px: 1.34 and 2.4, the
  latter with the first product's gradient at the weights counted in);
- ``--product double-backward`` (exact products, the default before): ``outer_iteration_s_128=12.5
  outer_iteration_s_320=46.5 hypergradient_over_finetune=0.98 hvp_over_train_step=3.40`` (at
  320 px: 1.60 and 7.0).

Measured 2026-12-06, session 13, with the default preset (azimuth bins by the look, the rest by
the hypergradient, finite-difference products), 1 thread, machine otherwise quiet: full mode
``outer_iteration_s_128=8.4 outer_iteration_s_320=36.1 hypergradient_over_finetune=1.46
hvp_over_train_step=1.23`` (1.8 min); --quick ``outer_iteration_s_128=8.7
outer_iteration_s_320=45.5 hypergradient_over_finetune=1.52 hvp_over_train_step=2.27``.

Measured 2026-12-06, session 13 (--quick --preset neural-sim: no warm-up iteration, first-call
costs included; 2 shared cores, contended, 1 thread): finite-difference (now the default)
``outer_iteration_s_128=7.2 outer_iteration_s_320=46.4 hypergradient_over_finetune=0.83
hvp_over_train_step=1.57``; ``--product double-backward`` ``outer_iteration_s_128=7.7
outer_iteration_s_320=45.1 hypergradient_over_finetune=1.01 hvp_over_train_step=3.18``. The
default preset alone: ``hypergradient_over_finetune=0.02 hvp_over_train_step=0.00``.

The two full runs met different contention (the 320 px fine-tuning took 13.9 s in the second, 18.2 s
in the first), so compare the ratios, not the seconds. CG made 2 products in every timed
iteration.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not benchmarks/, leads
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import optimizer.direction as direction_module  # noqa: E402
import optimizer.hessian as hessian_module  # noqa: E402
import optimizer.loop as loop_module  # noqa: E402
import optimizer.strategies.neural_sim as neural_sim_module  # noqa: E402
from detector.datasets import load_dataset  # noqa: E402
from optimizer.config import OptimizeConfig, merged  # noqa: E402
from optimizer.context import resolve_device  # noqa: E402
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig  # noqa: E402
from renderer.scene_spec import load_scene, read_scene_spec  # noqa: E402
from service.demo import render_target_set  # noqa: E402

LOOP_STAGES = {"render": "render", "train": "finetune", "val_loss": "val_loss", "val_map": "val_map"}
"""_Loop methods timed, and the stage each is reported as."""
STRATEGY_STAGES = {"outer_step_direction": "hypergradient", "step_psi": "psi_step"}
"""NeuralSim (optimizer.strategies.neural_sim) methods timed, and the stage each is reported as."""
HYPERGRADIENT_PARTS = {"validation_loss_and_gradient": "val_gradient", "inverse_hessian_direction": "inverse_hessian",
                       "pathwise_backward": "pathwise", "per_image_dots": "alignment",
                       "per_image_dots_and_image_gradient": "mixed_and_alignment"}
"""optimizer.strategies.neural_sim functions the hypergradient calls, timed as its parts."""


class Timers:
    """Seconds and calls per name, for wrapped callables."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.device = device

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(timers: Timers) -> None:
    """Wrap the loop's stages and the hypergradient's parts with ``timers`` (module-wide)."""
    for method, name in LOOP_STAGES.items():
        setattr(loop_module._Loop, method, timers.wrap(name, getattr(loop_module._Loop, method)))
    strategy = neural_sim_module.NeuralSim
    for method, name in STRATEGY_STAGES.items():
        setattr(strategy, method, timers.wrap(name, getattr(strategy, method)))
    for function, name in HYPERGRADIENT_PARTS.items():
        setattr(neural_sim_module, function, timers.wrap(name, getattr(neural_sim_module, function)))
    for name in ("exact_hvp", "finite_difference_hvp"):
        make_hvp = getattr(hessian_module, name)
        # Bound now (default argument): optimizer.direction imported these names from optimizer.hessian.
        setattr(direction_module, name, lambda *a, make=make_hvp, **k: timers.wrap("hvp", make(*a, **k)))


def time_iteration(renderer: SceneRenderer, class_names: list[str], val_set, size: int, config: OptimizeConfig,
                   work: Path, timers: Timers, warm: bool) -> dict:
    """Stage seconds of one outer iteration of ``config`` at ``size`` px (after one untimed
    iteration when ``warm``)."""
    loop = loop_module._Loop(config, renderer, class_names, val_set, None, work / f"run_{size}", None, None, False)
    loop.out_dir.mkdir(parents=True, exist_ok=True)
    loop.initial_state()
    if warm:
        loop.iteration(0)
    timers.reset()
    start = time.perf_counter()
    loop.iteration(1 if warm else 0)
    total = time.perf_counter() - start
    row = {"size": size, "outer_iteration_s": total}
    row.update({f"{name}_s": seconds for name, seconds in timers.seconds.items()})
    row["hvp_calls"] = timers.calls.get("hvp", 0)
    row["hvp_each_s"] = timers.seconds.get("hvp", 0.0) / max(1, row["hvp_calls"])
    row["train_step_s"] = timers.seconds["finetune"] / max(1, config.budget.inner_steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="no warm-up iteration (first-call costs included)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 320])
    parser.add_argument("--hessian", default=None,
                        help="OptimizeConfig.hypergradient.hessian_layers (default: the product's)")
    parser.add_argument("--product", default=None,
                        help="OptimizeConfig.hypergradient.hessian_product (default: the product's)")
    parser.add_argument("--preset", default=None,
                        help="the job's preset (default: the product's, which takes no Hessian products since "
                             "session 13; 'neural-sim' times the inverse-Hessian solve)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    overrides = {"detector": {"warmup_steps": 0}, "budget": {"final_images": 0}, "hypergradient": {}}
    if args.hessian is not None:
        overrides["hypergradient"]["hessian_layers"] = args.hessian
    if args.product is not None:
        overrides["hypergradient"]["hessian_product"] = args.product
    if args.preset is not None:
        overrides["preset"] = args.preset
    print(f"device={name} settings=OptimizeConfig() + {overrides}", flush=True)

    spec = read_scene_spec("demo")
    fields, backgrounds = load_scene(spec)
    renderer = SceneRenderer(SceneRendererConfig(fov_deg=spec.fov_deg), fields, backgrounds)
    timers = Timers(device)
    instrument(timers)
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        val_set = load_dataset(render_target_set("demo", work / "val", 16, 128) / "annotations.json")
        for size in args.sizes:
            config = OptimizeConfig.from_dict(merged({"scene": {"spec": "demo"}, "detector": {"image_size": size}},
                                                     overrides))
            row = time_iteration(renderer, spec.class_names, val_set, size, config, work, timers, not args.quick)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    by_size = {row["size"]: row for row in rows}
    first = by_size.get(128, rows[0])
    print(" ".join(f"outer_iteration_s_{row['size']}={row['outer_iteration_s']:.1f}" for row in rows)
          + f" hypergradient_over_finetune={first['hypergradient_s'] / first['finetune_s']:.2f}"
          f" hvp_over_train_step={first['hvp_each_s'] / first['train_step_s']:.2f}")


if __name__ == "__main__":
    main()
