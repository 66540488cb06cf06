"""The fixed baselines: psi stays where it starts and the loop detector trains on its draws."""

from __future__ import annotations

from detector.targets import ImageBatch
from optimizer.config import OptimizeConfig
from optimizer.psi import OptimizerError, Psi, PsiConfig, PsiNoise
from optimizer.strategies.base import Step, Strategy


class Fixed(Strategy):
    """psi learns nothing; the loop detector fine-tunes, warm-started, on every iteration's images."""

    def step(self, t: int, batch: ImageBatch, noise: PsiNoise, sampler: Psi, record: dict) -> Step:
        return self.train_loop_detector(t, batch)


class Uniform(Fixed):
    """``uniform``: the initial psi with every part fixed."""

    keeps_the_uniform_start = True

    @classmethod
    def initial_psi(cls, config: OptimizeConfig, psi_config: PsiConfig) -> Psi:
        return Psi.uniform(psi_config)


class Oracle(Fixed):
    """``oracle``: fixed at the target's true distribution (Psi.from_target(**psi.oracle))."""

    @classmethod
    def initial_psi(cls, config: OptimizeConfig, psi_config: PsiConfig) -> Psi:
        if config.psi.oracle is None:
            raise OptimizerError("method 'oracle' needs psi.oracle (Psi.from_target arguments: the target's distribution)")
        try:
            return Psi.from_target(psi_config, **config.psi.oracle)
        except TypeError as error:
            raise OptimizerError(f"OptimizeConfig.psi.oracle: {error}") from error
