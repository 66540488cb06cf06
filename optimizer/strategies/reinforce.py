"""REINFORCE (Learning-to-Simulate): a copy of the reference detector fine-tunes on psi's
draws, and its search score, less a moving-average baseline, is every image's reward for a
score-function step on psi."""

from __future__ import annotations

import torch

from detector.targets import ImageBatch
from optimizer.estimators import score_function_surrogate
from optimizer.psi import Psi, PsiNoise
from optimizer.strategies.base import Step
from optimizer.strategies.gradient import GradientStrategy


class Reinforce(GradientStrategy):
    """Psi's optimiser and the reward baseline are its state (GradientStrategy)."""

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        trained, score = self.train_copy(t, batch)
        baseline = self.baseline.update(torch.tensor([score]))
        rewards = torch.full((noise.batch_size,), score, device=self.loop.device)
        psi = self.loop.psi
        score_function_surrogate(psi.log_prob(noise, set(self.config.psi.learnable)), rewards, baseline).backward()
        record["reward"], record["reward_baseline"] = score, baseline
        record["hypergradient_norm"] = self.step_psi(t)
        return trained
