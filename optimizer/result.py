"""What a run of the closed loop returns, and the finished run it may reuse instead."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from optimizer.config import OptimizeConfig

Status = Literal["completed", "cancelled"]


@dataclass
class OptimizeResult:
    """What :func:`optimizer.loop.run_optimization` leaves, besides the files in ``out_dir``."""

    status: Status
    out_dir: Path
    iterations_done: int
    psi: dict
    """Psi.snapshot() of the learned (or fixed) psi."""
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    """Final metrics: {"test": {...}, "val": {...}} with map50_95, map50, per_class_ap (empty
    when cancelled or without a final stage)."""
    images_rendered: int = 0
    """Every image rendered: outer iterations (warm-up included) and the final dataset."""
    report: Path | None = None
    detector: Path | None = None
    dataset: Path | None = None


def completed_report(out_dir: Path, config: OptimizeConfig) -> dict | None:
    """The report of a finished run of ``config`` in ``out_dir`` (what :func:`optimizer.loop.run_loop`
    reuses instead of running again), or None."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("status") != "completed" or config.differences(report.get("config") or {}):
        return None
    return report


def completed_result(out_dir: Path, config: OptimizeConfig) -> OptimizeResult | None:
    """The result of a finished run of ``config`` in ``out_dir``, if there is one."""
    report = completed_report(out_dir, config)
    if report is None:
        return None
    detector = out_dir / "detector.pt"
    dataset = out_dir / "dataset"
    return OptimizeResult(
        status="completed", out_dir=out_dir, iterations_done=report["iterations_done"], psi=report["psi"],
        history=report["history"], metrics=report["final"], images_rendered=report["images_rendered"],
        report=out_dir / "report.json", detector=detector if detector.is_file() else None,
        dataset=dataset if dataset.is_dir() else None,
    )
