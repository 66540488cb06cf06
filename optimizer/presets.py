"""Named method presets of the closed loop (as nerfstudio's ``method_configs``).

A job chooses a preset by name (``OptimizeConfig.preset``); the preset sets the fields of its
``outer`` section named in ``PRESET_FIELDS`` and the job's own explicit fields go on top. Which
preset is the default, and why, is in docs/findings.md (2026-12-06, "presets"):
``neural-sim-appearance`` closed 0.90 of the uniform -> oracle test-mAP gap on the shift
benchmark's pose shift where the paper's method (``neural-sim``) closed 0.28, and both learn the
other parts the same way.

Torch-free on purpose: the API lists the presets (``GET /v1/presets``) without the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class Preset:
    """One named way of running the loop."""

    name: str
    description: str
    """One line: what it does."""
    settings: Mapping[str, Any]
    """OuterConfig fields it sets (a subset of PRESET_FIELDS); the job's explicit fields win."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "settings": dict(self.settings)}


PRESET_FIELDS: tuple[str, ...] = ("method", "estimator", "enumerate_bins", "alignment_objective",
                                  "alignment_normalisation")
"""The fields of OptimizeConfig.outer (OuterConfig) presets set; every preset sets each of them, so a preset alone
decides them unless the job names one explicitly."""

_PAPER = {"method": "neural-sim", "estimator": "both", "enumerate_bins": False, "alignment_objective": "mean",
          "alignment_normalisation": "standardise"}
_FIXED = {"estimator": "both", "enumerate_bins": False, "alignment_objective": "mean",
          "alignment_normalisation": "standardise"}
"""Settings a preset that does not run neural-sim carries only so that every preset sets every
PRESET_FIELDS entry (the loop reads them for neural-sim alone)."""

PRESETS: Mapping[str, Preset] = MappingProxyType({preset.name: preset for preset in (
    Preset("neural-sim-appearance",
           "Neural-Sim whose azimuth bins match the look of the photos' objects (crop MMD); "
           "other parts by the detector's hypergradient. The best measured.",
           {**_PAPER, "enumerate_bins": True, "alignment_objective": "appearance",
            "alignment_normalisation": "cosine"}),
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

DEFAULT_PRESET = "neural-sim-appearance"


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming it and the choices otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"preset: unknown preset {name!r}; use one of {list(PRESETS)}") from None


def resolve(name: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The PRESET_FIELDS values of a job: preset ``name``'s settings, then the job's ``explicit``
    ones (None: not set) on top."""
    chosen = preset(name).settings
    return {key: chosen[key] if explicit.get(key) is None else explicit[key] for key in PRESET_FIELDS}
