"""The outer methods of the loop, one strategy each (interface: optimizer.strategies.base)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizer.psi import OptimizerError
from optimizer.strategies.base import Step, Strategy
from optimizer.strategies.fixed import Oracle, Uniform
from optimizer.strategies.neural_sim import NeuralSim
from optimizer.strategies.random_search import RandomSearch
from optimizer.strategies.reinforce import Reinforce

if TYPE_CHECKING:
    from optimizer.context import LoopContext

STRATEGIES: dict[str, type[Strategy]] = {
    "neural-sim": NeuralSim,
    "uniform": Uniform,
    "oracle": Oracle,
    "random-search": RandomSearch,
    "reinforce": Reinforce,
}
"""config.outer.method -> its strategy; a new method is a module here and an entry (and a Method value)."""


def make_strategy(loop: LoopContext) -> Strategy:
    """The strategy of ``loop.config.outer.method``, set up for ``loop``."""
    method = loop.config.outer.method
    try:
        strategy = STRATEGIES[method]
    except KeyError:
        raise OptimizerError(f"OptimizeConfig.outer.method: unknown value {method!r}; "
                             f"use one of {sorted(STRATEGIES)}") from None
    return strategy(loop)


__all__ = ["STRATEGIES", "Step", "Strategy", "make_strategy"]
