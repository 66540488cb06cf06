"""The fixed baselines ``uniform`` and ``oracle``: psi stays where it starts
(optimizer.baselines.initial_psi) and the loop detector trains on its draws."""

from __future__ import annotations

from detector.targets import ImageBatch
from optimizer.psi import Psi, PsiNoise
from optimizer.strategies.base import Step, Strategy


class Fixed(Strategy):
    """psi learns nothing; the loop detector fine-tunes, warm-started, on every iteration's images."""

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        return self.train_loop_detector(t, batch)
