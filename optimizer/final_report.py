"""The run's last files: ``psi.json``, ``report.json`` and the plots, and the done message."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from optimizer.baselines import azimuth_total_variation
from optimizer.best_detector import best_iteration
from optimizer.config import plain
from optimizer.psi import Psi
from optimizer.report import plot_history, plot_psi_before_after, write_json_atomic
from optimizer.result import OptimizeResult
from optimizer.uniform_baseline import psi_before_after

if TYPE_CHECKING:
    from optimizer.context import LoopContext


def write_report(
    loop: LoopContext,
    val_loss_start: float | None,
    final: dict,
    real_report: dict,
    stage_seconds: dict[str, float],
    dataset_dir: Path | None,
    detector_path: Path | None,
) -> OptimizeResult:
    """Write psi, the report and the plots of ``loop``'s completed run into its folder, emit
    'done' with the final numbers, and return the run's result. ``final``: the final detector's
    metrics per set; ``real_report``: the final-stage entries (final training data, real-only and
    uniform baselines); ``stage_seconds``: the final stages' durations."""
    config, out_dir = loop.config, loop.out_dir
    loop.emit("report", 0, 1, message="writing the report")
    snapshot = loop.psi.snapshot()
    write_json_atomic(out_dir / "psi.json", {
        "snapshot": snapshot,
        "psi_config": plain(asdict(loop.psi.config)),
        "priors": loop.priors,
        # Bins of probability 0 have logit -inf, which JSON cannot hold; -1e4 is as impossible.
        "state": {name: torch.nan_to_num(value.detach().cpu(), neginf=-1e4).tolist()
                  for name, value in loop.psi.state_dict().items()},
    })
    before_after = psi_before_after(Psi.uniform(loop.psi_config).snapshot(), snapshot, config.psi.learnable)
    plots = [*plot_history(loop.history, loop.class_names, final, out_dir / "plots"),
             *plot_psi_before_after(before_after, out_dir / "plots")]
    report = {
        "status": "completed",
        "config": plain(config.to_dict()),
        "class_names": loop.class_names,
        "iterations_done": len(loop.history),
        "images_rendered": loop.images_rendered,
        "val_loss_start": val_loss_start,
        "final": final,
        **real_report,
        "psi": snapshot,
        "psi_before_after": before_after,
        "best_loop_detector": best_iteration(loop.history),
        "priors": loop.priors,
        "azimuth_tv": (azimuth_total_variation(snapshot["azimuth"]["probs"], loop.target_azimuth)
                       if loop.target_azimuth is not None else None),
        "seconds": {"outer": round(sum(r["seconds"] for r in loop.history), 3), **stage_seconds},
        "plots": [str(p.relative_to(out_dir)) for p in plots],
        "history": loop.history,
    }
    report_path = write_json_atomic(out_dir / "report.json", report)
    result = OptimizeResult(
        status="completed", out_dir=out_dir, iterations_done=len(loop.history), psi=snapshot,
        history=loop.history, metrics=final, images_rendered=loop.images_rendered, report=report_path,
        detector=detector_path, dataset=dataset_dir,
    )
    loop.emit("done", 1, 1, metrics={**_final_numbers(final), **_baseline_numbers(real_report)},
              psi=snapshot, message="done")
    return result


def _baseline_numbers(report: dict) -> dict[str, float]:
    """The done report's numbers of the uniform baseline (none when there is none)."""
    if "difference" not in report:
        return {}
    baseline, difference = report["baseline"], report["difference"]
    interval = difference["map50_95_bootstrap"]
    numbers = {"baseline_test_map50_95": baseline["test"]["map50_95"], "baseline_test_map50": baseline["test"]["map50"],
               "difference_map50_95": difference["map50_95"], "difference_map50_95_std": interval["std"],
               "difference_map50_95_low": interval["low"], "difference_map50_95_high": interval["high"]}
    return {name: value for name, value in numbers.items() if value is not None}


def _final_numbers(final: dict) -> dict[str, float]:
    """The final detector's float metrics as ``<set>_<metric>``."""
    return {f"{name}_{key}": value for name, metrics in final.items() for key, value in metrics.items()
            if isinstance(value, float)}
