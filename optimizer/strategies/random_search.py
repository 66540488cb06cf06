"""Random search: each outer iteration proposes a candidate psi (the initial psi first, then
optimizer.baselines.random_candidate), fine-tunes a copy of the reference detector on its
images and keeps the best-scoring candidate as psi (the incumbent)."""

from __future__ import annotations

from detector.targets import ImageBatch
from optimizer.baselines import random_candidate
from optimizer.checkpoint import LoopState
from optimizer.config import OptimizeConfig
from optimizer.psi import Psi, PsiConfig, PsiNoise
from optimizer.seeds import generator
from optimizer.strategies.base import Step, Strategy


class RandomSearch(Strategy):
    """The incumbent ``{"psi": state_dict, "score": search score, "iteration": t}`` is its state."""

    @classmethod
    def initial_psi(cls, config: OptimizeConfig, psi_config: PsiConfig) -> Psi:
        return Psi(psi_config.frozen())  # the candidates are drawn whole: psi itself is never a parameter

    def start(self) -> None:
        self.best: dict | None = None

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: LoopState) -> None:
        self.best = state.best

    def draw(self, t: int) -> tuple[Psi, PsiNoise]:
        if t == 0:
            return super().draw(t)  # the initial psi is the first candidate
        loop = self.loop
        start = self.initial_psi(self.config, loop.psi_config).to(loop.device)
        candidate = random_candidate(start, set(self.config.psi.learnable), generator(self.config.seed, t, "candidate"),
                                     shared=self.config.psi.share_classes)
        return candidate, self.sample(candidate, t)

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        trained, score = self.train_copy(t, batch)
        record["candidate_score"] = score
        if self.best is None or score > self.best["score"]:
            self.best = {"psi": {k: v.detach().cpu().clone() for k, v in sampler.state_dict().items()},
                         "score": score, "iteration": t}
            self.loop.psi.load_state_dict(self.best["psi"])
        record["best_candidate"] = self.best["iteration"]
        return trained
