"""psi for each method of the loop, and the random-search proposal.

- ``neural-sim`` and ``reinforce``: psi starts at the config's initial values, the parts named
  in ``OptimizeConfig.psi.learnable`` are parameters.
- ``uniform``: the same initial psi with every part fixed (Psi.uniform).
- ``oracle``: fixed at the target's true distribution (Psi.from_target(**psi.oracle)).
- ``random-search``: each outer iteration proposes a candidate (:func:`random_candidate`);
  the incumbent is the candidate whose images gave the lowest validation loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from optimizer.config import OptimizeConfig
from optimizer.psi import PARTS, OptimizerError, Psi, PsiConfig
from renderer.resting import PoseTable

RANDOM_SEARCH_RANGES = {
    "distance_log_factor": 0.5,
    "exposure_stops": 1.0,
    "color_gain_log": 0.2,
}
"""Half-widths of the uniform proposals around the initial psi: distance median times
exp(+-0.5), exposure mean +-1 stop, colour gain median times exp(+-0.2)."""


def psi_config(
    config: OptimizeConfig, radiance_fields: Sequence[nn.Module], num_backgrounds: int, poses: Sequence[PoseTable] | None = None
) -> PsiConfig:
    """The PsiConfig of a job: ``config.psi.initial`` overrides, the scene's classes (one per object's
    radiance field, with its ``appearance_embeddings`` count; fields without that attribute
    have none), each object's resting ``poses`` (the renderer's pose tables; None: no support
    plane) and backgrounds, and learnability from ``config.psi.learnable``."""
    unknown_parts = sorted(set(config.psi.learnable) - set(PARTS))
    if unknown_parts:
        raise OptimizerError(f"OptimizeConfig.psi.learnable: unknown parts {unknown_parts}; the parts are {list(PARTS)}")
    known = {f.name for f in fields(PsiConfig)}
    reserved = {"num_classes", "num_backgrounds", "appearance_embeddings", "pose_probs"} | {f"learn_{part}" for part in PARTS}
    bad = sorted(set(config.psi.initial) - known)
    if bad:
        raise OptimizerError(f"OptimizeConfig.psi.initial: unknown PsiConfig fields {bad}; known: {sorted(known - reserved)}")
    clashing = sorted(set(config.psi.initial) & reserved)
    if clashing:
        raise OptimizerError(
            f"OptimizeConfig.psi.initial: {clashing} are set by the loop (classes, appearance embeddings, resting poses "
            "and backgrounds come from the scene, learnability from 'learnable')"
        )
    overrides: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value for name, value in config.psi.initial.items()
    }
    learn = {f"learn_{part}": part in config.psi.learnable for part in PARTS}
    appearance_embeddings = tuple(getattr(field, "appearance_embeddings", 0) for field in radiance_fields)
    pose_probs = tuple(tuple(table.choice_probs()) for table in poses) if poses else ()
    return PsiConfig(
        num_classes=len(radiance_fields), appearance_embeddings=appearance_embeddings, num_backgrounds=num_backgrounds,
        pose_probs=pose_probs, **overrides, **learn,
    )


def initial_psi(config: OptimizeConfig, psi_cfg: PsiConfig) -> Psi:
    """psi at the start of a run of ``config.outer.method``."""
    if config.outer.method == "uniform":
        return Psi.uniform(psi_cfg)
    if config.outer.method == "oracle":
        if config.psi.oracle is None:
            raise OptimizerError("method 'oracle' needs psi.oracle (Psi.from_target arguments: the target's distribution)")
        try:
            return Psi.from_target(psi_cfg, **config.psi.oracle)
        except TypeError as error:
            raise OptimizerError(f"OptimizeConfig.psi.oracle: {error}") from error
    if config.outer.method == "random-search":
        # The candidates are drawn whole; psi itself is never a parameter.
        return Psi(psi_cfg.frozen())
    return Psi(psi_cfg)


@torch.no_grad()
def random_candidate(start: Psi, learnable: set[str], generator: torch.Generator, shared: bool = False) -> Psi:
    """A random psi: ``start`` with each part in ``learnable`` redrawn, per class (``shared``:
    one draw for all classes, except the appearance, whose choices differ between objects).

    Probability tables (azimuth bins, classes, counts, backgrounds, each class's appearances)
    are drawn uniformly from the simplex (Dirichlet(1)); the elevation median uniformly inside
    the range; the distance median, exposure mean and colour-gain median uniformly around their
    initial values (see RANDOM_SEARCH_RANGES). Spreads are kept.
    """
    candidate = Psi(start.config.frozen()).to(start.device)
    candidate.load_state_dict(start.state_dict())

    def draw(shape: torch.Size, per_class: bool = True) -> torch.Tensor:
        """Uniform [0, 1) values of ``shape``; with ``shared``, one row repeated for every class."""
        if shared and per_class:
            return torch.rand((1, *shape[1:]), generator=generator).expand(shape).clone()
        return torch.rand(shape, generator=generator)

    def uniform(shape: torch.Size, half_width: float) -> torch.Tensor:
        return ((2 * draw(shape) - 1) * half_width).to(start.device)

    def simplex_logits(shape: torch.Size, per_class: bool = False) -> torch.Tensor:
        # Normalised exponentials are Dirichlet(1); their logs are logits up to a constant.
        exponential = -torch.log(draw(shape, per_class).clamp_min(1e-12))
        return exponential.log().to(start.device)

    for part in sorted(learnable):  # a fixed order: a set's order changes between processes, and with it the draws
        if part == "azimuth":
            candidate.azimuth_logits.copy_(simplex_logits(candidate.azimuth_logits.shape, per_class=True))
        elif part == "appearance":
            # Choices past a class's embeddings get values too; psi masks them out.
            candidate.appearance_logits.copy_(simplex_logits(candidate.appearance_logits.shape))
        elif part == "background":
            candidate.background_logits.copy_(simplex_logits(candidate.background_logits.shape))
        elif part == "class_mix":
            candidate.class_logits.copy_(simplex_logits(candidate.class_logits.shape))
        elif part == "count":
            candidate.count_logits.copy_(simplex_logits(candidate.count_logits.shape))
        elif part == "elevation":
            fraction = 0.05 + 0.9 * draw(candidate.elevation_loc.shape)
            candidate.elevation_loc.copy_(torch.logit(fraction).to(start.device))
        elif part == "distance":
            candidate.distance_loc.add_(uniform(candidate.distance_loc.shape, RANDOM_SEARCH_RANGES["distance_log_factor"]))
        elif part == "exposure":
            candidate.exposure_loc.add_(uniform(candidate.exposure_loc.shape, RANDOM_SEARCH_RANGES["exposure_stops"]))
        elif part == "color_gain":
            candidate.color_gain_loc.add_(uniform(candidate.color_gain_loc.shape, RANDOM_SEARCH_RANGES["color_gain_log"]))
    return candidate


def azimuth_total_variation(probs: torch.Tensor | list, target: torch.Tensor | list) -> float:
    """Total-variation distance between azimuth bin distributions ([K] or per class [C K],
    averaged over classes): half the L1 distance, 0 (equal) to 1 (disjoint)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    q = torch.as_tensor(target, dtype=torch.float64)
    p, q = torch.broadcast_tensors(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]))
    q = q / q.sum(-1, keepdim=True)
    return float(0.5 * (p / p.sum(-1, keepdim=True) - q).abs().sum(-1).mean())

