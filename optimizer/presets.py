"""Named method presets of the closed loop (as nerfstudio's ``method_configs``).

A job chooses a preset by name (``OptimizeConfig.preset``); the preset sets the fields of its
``outer`` section named in ``PRESET_FIELDS`` and the job's own explicit fields go on top. Which
preset is the default, and why, is in docs/findings.md (2026-12-06, session 14, "the default
preset"): on the shift benchmark ``appearance`` moved every part of psi toward its target on
every seed (the previous default, ``neural-sim-appearance``, moved the colour gain away and the
elevation hardly), and on the real-photo benchmark it scored as well as any preset (6 seeds; no
preset beats the starting psi there beyond the benchmark's noise). It takes no detector
gradient: an outer iteration at 128 px took 4.8 s against the previous default's 8.3 s
(benchmarks/loop_cost.py --quick).

Torch-free on purpose: the API lists the presets (``GET /v1/presets``) without the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from optimizer.part_names import PARTS


@dataclass(frozen=True)
class Preset:
    """One named way of running the loop."""

    name: str
    description: str
    """One line: what it does."""
    settings: Mapping[str, Any]
    """OuterConfig fields it sets (a subset of PRESET_FIELDS); the job's explicit fields win."""

    def config_settings(self) -> dict[str, Any]:
        """``settings`` as a config holds them (JSON's lists, not the tuples kept here immutable)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.settings.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "settings": self.config_settings()}


PRESET_FIELDS: tuple[str, ...] = ("method", "estimator", "enumerate_bins", "alignment_objective",
                                  "alignment_normalisation", "appearance_parts")
"""The fields of OptimizeConfig.outer (OuterConfig) presets set; every preset sets each of them, so a preset alone
decides them unless the job names one explicitly."""

_PAPER = {"method": "neural-sim", "estimator": "both", "enumerate_bins": False, "alignment_objective": "mean",
          "alignment_normalisation": "standardise", "appearance_parts": ()}
_FIXED = {"estimator": "both", "enumerate_bins": False, "alignment_objective": "mean",
          "alignment_normalisation": "standardise", "appearance_parts": ()}
"""Settings a preset that does not run neural-sim carries only so that every preset sets every
PRESET_FIELDS entry (the loop reads them for neural-sim alone)."""
_APPEARANCE = {**_PAPER, "enumerate_bins": True, "alignment_objective": "appearance", "alignment_normalisation": "cosine"}

PRESETS: Mapping[str, Preset] = MappingProxyType({preset.name: preset for preset in (
    Preset("appearance",
           "Every learnable part moves its images' objects toward the look of the photos' objects (MMD of "
           "crops, box sizes, colours, backgrounds); no detector gradient. Moves every part toward its "
           "target in simulation; on real photos as good as any preset.",
           {**_APPEARANCE, "appearance_parts": PARTS}),
    Preset("neural-sim-appearance",
           "Neural-Sim whose azimuth bins match the look of the photos' objects (crop MMD); the other "
           "parts follow the detector's hypergradient (the previous default).",
           {**_APPEARANCE, "appearance_parts": ("azimuth",)}),
    Preset("neural-sim",
           "The paper's bi-level method: every learnable part follows the detector's hypergradient "
           "(pathwise for exposure and colour, score function for the rest).",
           _PAPER),
    Preset("uniform",
           "No search: psi stays at its start (uniform, or the priors from the photos).",
           {"method": "uniform", **_FIXED}),
    Preset("reinforce",
           "REINFORCE on the validation mAP of a detector fine-tuned on each draw.",
           {"method": "reinforce", **_FIXED}),
    Preset("random-search",
           "Random psi candidates, the best by validation mAP kept.",
           {"method": "random-search", **_FIXED}),
)})
"""Every preset a job can name, the default first."""

DEFAULT_PRESET = "appearance"


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming it and the choices otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"preset: unknown preset {name!r}; use one of {list(PRESETS)}") from None


def resolve(name: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The PRESET_FIELDS values of a job: preset ``name``'s settings, then the job's ``explicit``
    ones (None: not set) on top."""
    chosen = preset(name).config_settings()
    return {key: chosen[key] if explicit.get(key) is None else explicit[key] for key in PRESET_FIELDS}
