"""The interface between the loop and an outer method (as gsplat's ``strategy/base.py``).

The loop (optimizer.loop) owns the sequence and what every method shares: psi, the loop
detector and its inner optimiser state, rendering, fine-tuning, the validation loss and mAP,
the history and the checkpoint. A :class:`Strategy` decides where psi starts and, per outer
iteration, which psi draws the scenes, what psi learns from them and which detector trains on
them; it keeps its own state (reward baseline, incumbent, psi's optimiser, ...) and says which
checkpoint entries (optimizer.checkpoint.LoopState fields) hold it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ultralytics.nn.tasks import DetectionModel

from detector.evaluate import DetectionMetrics
from detector.targets import ImageBatch
from detector.train import FinetuneState
from optimizer.checkpoint import LoopState
from optimizer.config import OptimizeConfig
from optimizer.psi import Psi, PsiConfig, PsiNoise
from optimizer.seeds import generator

if TYPE_CHECKING:
    from optimizer.context import LoopContext


@dataclass
class Step:
    """What an outer iteration's training left, for the loop's record."""

    model: DetectionModel
    """The detector that trained on the iteration's images (the loop detector or a copy)."""
    trained: FinetuneState
    val_loss: float
    metrics: DetectionMetrics | None
    """Its validation mAP, when measured this iteration."""
    batch: ImageBatch
    """The images it trained on (the iteration's sample images)."""


class Strategy:
    """One outer method. Built when the loop is set up (before psi exists: fail there, before
    any work); :meth:`start` or :meth:`load_state_dict` then gives it its state."""

    pose_group: int = 1
    """Consecutive scenes of a draw that share all but the azimuth."""
    notes: tuple[str, ...] = ()
    """Settings this method leaves unused for this job, said once in the set-up message."""
    keeps_the_uniform_start: bool = False
    """psi stays at its uniform start: the final stage's uniform baseline would repeat the run."""

    def __init__(self, loop: LoopContext) -> None:
        self.loop = loop
        self.config = loop.config

    @classmethod
    def initial_psi(cls, config: OptimizeConfig, psi_config: PsiConfig) -> Psi:
        """psi at the start of a run: the config's initial values, the parts named in
        ``config.psi.learnable`` parameters."""
        return Psi(psi_config)

    def start(self) -> None:
        """Fresh state, after the loop made its initial psi."""

    def state_dict(self) -> dict:
        """The LoopState fields this strategy keeps (tensors on the CPU)."""
        return {}

    def load_state_dict(self, state: LoopState) -> None:
        """Take the state back from a checkpoint, after the loop restored psi."""

    def draw(self, t: int) -> tuple[Psi, PsiNoise]:
        """The psi that draws outer iteration ``t``'s scenes, and its recorded draws."""
        return self.loop.psi, self.sample(self.loop.psi, t)

    def sample(self, psi: Psi, t: int) -> PsiNoise:
        """Outer iteration ``t``'s draws from ``psi`` (in groups of pose_group)."""
        draws = generator(self.config.seed, t, "render")
        return psi.sample(self.config.budget.images_per_iteration, draws, self.pose_group).noise

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        """Learn from iteration ``t``'s rendered ``batch`` (drawn by ``sampler``) and train a
        detector on it; adds the method's numbers to ``record``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by the methods

    def train_loop_detector(self, t: int, batch: ImageBatch) -> Step:
        """Fine-tune the loop detector, warm-started, on ``batch``; its validation loss and mAP."""
        loop = self.loop
        trained = loop.train(loop.detector, batch, self.config.budget.inner_steps, loop.finetune_state, t)
        loop.finetune_state = trained
        return Step(loop.detector, trained, loop.val_loss(loop.detector, t), loop.val_map(loop.detector, t), batch)

    def train_copy(self, t: int, batch: ImageBatch) -> tuple[Step, float]:
        """Fine-tune a copy of the loop detector (the reference every candidate or policy sample
        starts from: Learning-to-Simulate trains a fresh model per reward) on ``batch``; the
        step and its search score."""
        model = copy.deepcopy(self.loop.detector)
        start = copy.deepcopy(self.loop.finetune_state)
        trained = self.loop.train(model, batch, self.config.budget.inner_steps, start, t)
        score, val_loss, metrics = self.search_score(model, t)
        return Step(model, trained, val_loss, metrics, batch), score

    def search_score(
        self, model: DetectionModel, iteration: int, periodic_map: bool = True
    ) -> tuple[float, float, DetectionMetrics | None]:
        """(score, validation loss, metrics) of a fine-tuned detector copy, higher score better:
        the validation mAP50-95 or minus the validation loss (search_metric). The mAP is also
        computed every val_map_every iterations for the record, unless not ``periodic_map``."""
        val_loss = self.loop.val_loss(model, iteration)
        by_map = self.config.outer.search_metric == "map50_95"
        metrics = self.loop.val_map(model, iteration, always=by_map) if by_map or periodic_map else None
        score = metrics.map50_95 if by_map else -val_loss
        return score, val_loss, metrics
