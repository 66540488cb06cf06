"""What a person sees of a job: one bar per long stage, the loop's bar closed when the final
stage starts (not redrawn at 100 % under each of its messages), and a few plain lines instead of
bars when the output is not a terminal."""

from __future__ import annotations

import io

from nerfsim_client import Event

from service.demo import _follow
from service.progress_view import StageProgress

OUTER, IMAGES, EPOCHS = 10, 400, 30


def demo_events() -> list[tuple[str, dict]]:
    """The event stream of the demo's job, in the order the worker publishes it."""
    events = [("status", {"status": "running"}),
              ("progress", {"stage": "setup", "iteration": 0, "total": 1, "message": "neural-sim: 3 classes"})]
    events += [("progress", {"stage": "outer", "iteration": t, "total": OUTER, "metrics": {"val_loss": 4.0 - t / 10},
                             "message": f"outer iteration {t + 1}/{OUTER}"}) for t in range(OUTER)]
    events += [("progress", {"stage": "final-render", "iteration": 0, "total": IMAGES, "message": "rendering"}),
               ("progress", {"stage": "final-render", "iteration": IMAGES, "total": IMAGES, "message": "dataset written"})]
    events += [("progress", {"stage": "final-train", "iteration": e, "total": EPOCHS, "metrics": {"train_box": 1.0 / e},
                             "message": f"final detector: epoch {e}/{EPOCHS}"}) for e in range(1, EPOCHS + 1)]
    events += [("progress", {"stage": "evaluate", "iteration": 0, "total": 1, "message": "evaluating the final detector"}),
               ("progress", {"stage": "report", "iteration": 0, "total": 1, "message": "writing the report"}),
               ("progress", {"stage": "done", "iteration": 1, "total": 1, "message": "done"}),
               ("status", {"status": "succeeded"})]
    return events


class RecordedJob:
    """Stands in for the SDK's job (nerfsim_client Job): the events of one finished job."""

    status = "succeeded"

    def events(self):
        yield from (Event(name, data) for name, data in demo_events())

    def refresh(self) -> "RecordedJob":
        return self


def test_the_demo_prints_a_few_plain_lines_when_not_a_terminal(capsys) -> None:
    assert _follow(RecordedJob()).status == "succeeded"
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "\r" not in printed, printed  # no bar redrawn in a log
    lines = printed.splitlines()
    # Each long stage: its start and one line per quarter; each short stage and status: one line.
    assert len(lines) <= 3 * 5 + 6, printed
    assert lines.count(f"closed loop: {OUTER}/{OUTER}  val_loss 3.1") == 1
    assert f"final rendering: {IMAGES}/{IMAGES}" in lines
    assert f"final training: {EPOCHS}/{EPOCHS}  train_box 0.033" in lines
    # The loop's progress is not repeated once the final stage has begun.
    first_final = next(i for i, line in enumerate(lines) if line.startswith("final rendering"))
    assert not any(line.startswith("closed loop") for line in lines[first_final:]), printed


def test_each_long_stage_has_its_own_bar_on_a_terminal() -> None:
    screen = io.StringIO()
    view = StageProgress(screen, bars=True)
    for event, data in demo_events():
        view.progress(data) if event == "progress" else view.line(f"job {data['status']}")
    view.close()
    shown = screen.getvalue()
    final = shown.index("final rendering")
    assert f"closed loop: 100%" in shown[:final] and f"{OUTER}/{OUTER}" in shown[:final]
    assert "closed loop" not in shown[final:], "the finished loop's bar was drawn again during the final stage"
    assert f"{IMAGES}/{IMAGES}" in shown[final:] and f"final training: 100%" in shown and f"{EPOCHS}/{EPOCHS}" in shown
    assert "evaluate: evaluating the final detector" in shown and "job succeeded" in shown
