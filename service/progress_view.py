"""A job's progress for a person at a terminal: one bar per long stage, or a few plain lines.

The loop reports stages one after the other (``setup``, ``outer``, ``final-render``,
``final-train``, ``evaluate``, ``report``, ``done``). Each long stage gets a bar of its own,
closed when the next stage starts, so the final rendering and training (most of a job's time)
show their own progress instead of a finished loop bar redrawn under every message. When the
output is not a terminal (a log file, CI), bars would print a copy of themselves at every
refresh; there each long stage prints its start and at most one line per quarter instead.
Used by ``nerfsim demo`` (events from the API) and ``nerfsim optimize`` (the loop's own reports).
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, TextIO

from tqdm import tqdm

BAR_STAGES = {"outer": "closed loop", "final-render": "final rendering", "final-train": "final training"}
"""The long stages (each shown with a bar or quarter lines), and what a person reads for them."""
UNITS = {"outer": "iter", "final-render": "img", "final-train": "epoch"}
SHOWN_METRICS = 3
"""Numbers shown beside a stage's progress (the first few the loop reports)."""


class StageProgress:
    """Shows progress reports (``optimizer.config.Progress.to_dict()`` or an API progress
    event's data) and status lines on ``file`` (standard error by default)."""

    def __init__(self, file: TextIO | None = None, bars: bool | None = None) -> None:
        self.file = file if file is not None else sys.stderr
        self.bars = _is_terminal(self.file) if bars is None else bars
        self.stage: str | None = None
        self.bar: tqdm | None = None
        self.quarters_shown = 0

    def progress(self, report: Mapping[str, Any]) -> None:
        stage, message = report.get("stage"), report.get("message", "")
        if stage != self.stage:
            self._end_stage()
            self.stage = stage
            if stage in BAR_STAGES:
                self._start_stage(stage, int(report.get("total") or 0))
            elif message:
                self.line(f"{stage}: {message}")
        if stage in BAR_STAGES:
            if message == "cancelled":
                self.line(f"{BAR_STAGES[stage]}: cancelled")
            else:
                self._advance(stage, report)

    def line(self, text: str) -> None:
        """A line of its own (above the open bar, if any)."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        self._end_stage()
        self.stage = None

    def _start_stage(self, stage: str, total: int) -> None:
        self.quarters_shown = 0
        if self.bars:
            self.bar = tqdm(total=total or None, desc=BAR_STAGES[stage], unit=UNITS[stage], file=self.file,
                            dynamic_ncols=True, leave=True)
        else:
            self.line(f"{BAR_STAGES[stage]}: started ({total} {UNITS[stage]})")

    def _advance(self, stage: str, report: Mapping[str, Any]) -> None:
        # 'outer' counts its iterations from 0; the other stages report what they have done.
        done = int(report.get("iteration", 0)) + (1 if stage == "outer" else 0)
        total = int(report.get("total") or 0)
        numbers = {k: round(v, 3) for k, v in (report.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        shown = dict(list(numbers.items())[:SHOWN_METRICS])
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(shown, refresh=False)
            self.bar.refresh()
            return
        quarters = 4 * done // total if total else 0
        if quarters > self.quarters_shown:
            self.quarters_shown = quarters
            extra = "  " + ", ".join(f"{k} {v}" for k, v in shown.items()) if shown else ""
            self.line(f"{BAR_STAGES[stage]}: {done}/{total}{extra}")

    def _end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # a closed or file-like object without a terminal
        return False

