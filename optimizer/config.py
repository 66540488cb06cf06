"""What a closed-loop job is asked to do, and what it reports while it runs.

``OptimizeConfig`` is the loop's whole input besides the output folder: a preset, a seed, a
device and eight sections (optimizer.sections, optimizer.search_sections), each checking its own
fields; ``validate()`` adds the rules that span sections. It is plain JSON-able data (nested, a
dict per section), so a job is reproducible from its config file. ``Progress`` is what the loop
hands to ``on_progress``.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from optimizer.part_names import REPARAMETERISED_PARTS
from optimizer.presets import DEFAULT_PRESET, resolve
from optimizer.psi_config import PsiConfig
from optimizer.search_sections import HypergradientConfig, OuterConfig, PsiSettings
from optimizer.sections import (
    AlignmentNormalisation,
    AlignmentObjective,
    BudgetConfig,
    DetectorSection,
    Estimator,
    FinalConfig,
    FinalInit,
    HessianLayers,
    HessianProduct,
    InnerOptimizer,
    InverseHessian,
    Method,
    SceneConfig,
    SearchMetric,
    Section,
    TargetsConfig,
    fail,
)

__all__ = [
    "AlignmentNormalisation", "AlignmentObjective", "BudgetConfig", "DetectorSection", "Estimator", "FinalConfig",
    "FinalInit", "HessianLayers", "HessianProduct", "HypergradientConfig", "InnerOptimizer", "InverseHessian",
    "Method", "OptimizeConfig", "OuterConfig", "Progress", "PsiSettings", "SceneConfig", "SearchMetric",
    "Stage", "TargetsConfig",
]

Stage = Literal["setup", "outer", "final-render", "final-train", "evaluate", "report", "done"]
SECTIONS: dict[str, type[Section]] = {section.name: section for section in (
    SceneConfig, TargetsConfig, BudgetConfig, OuterConfig, HypergradientConfig, PsiSettings, DetectorSection,
    FinalConfig)}
"""Every section by its attribute name, in OptimizeConfig's order."""
RESEARCH_FIELDS = ("outer.lookahead_bin_share", "outer.alignment_ignores", "outer.normalise_hypergradient")
"""Fields no preset uses: benchmarks/ sets them (or from_dict(..., benchmark=True)); a job cannot
(from_dict, the REST body and the CLI refuse them). Their findings: docs/findings.md."""
RESEARCH_VALUES = {"outer.estimator": "lookahead", "outer.alignment_objective": "mixture"}
"""Values no preset uses, refused the same way."""
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class OptimizeConfig:
    """A closed-loop job."""

    preset: str = field(default=DEFAULT_PRESET, metadata={"before": "neural-sim"})
    """The named method preset (optimizer.presets.PRESETS) that sets outer.method,
    outer.estimator, outer.enumerate_bins, outer.alignment_objective and
    outer.alignment_normalisation; any of those given explicitly (not None) wins over the preset."""
    seed: int = 0
    """Seeds every random draw of the run (with the iteration and purpose)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """What is rendered."""
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    """The labelled real photos."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """How much is rendered and trained."""
    outer: OuterConfig = field(default_factory=OuterConfig)
    """How psi is searched."""
    hypergradient: HypergradientConfig = field(default_factory=HypergradientConfig)
    """Neural-sim's inverse-Hessian-vector product."""
    psi: PsiSettings = field(default_factory=PsiSettings)
    """Which parts of psi move, where it starts and how it steps."""
    detector: DetectorSection = field(default_factory=DetectorSection)
    """The detector and its training in the loop."""
    final: FinalConfig = field(default_factory=FinalConfig)
    """The final dataset's detector and the baselines beside it."""

    def __post_init__(self) -> None:
        # The preset fills what the job left unset (None); explicit values stay. A copy, so that
        # a section shared with another config is not filled from this one's preset.
        explicit = asdict(self.outer)
        self.outer = replace(self.outer, **resolve(self.preset, explicit))

    def sections(self) -> list[Section]:
        """The eight sections, in order."""
        return [getattr(self, name) for name in SECTIONS]

    def validate(self) -> None:
        """Raise optimizer.psi.OptimizerError naming the first setting (``section.field``) that
        cannot work: each section's own checks, then the rules that span sections."""
        if self.device not in DEVICES:
            fail("device", f"unknown value {self.device!r}; use one of {list(DEVICES)}")
        for section in self.sections():
            section.validate()
        _check_across_sections(self)

    def warmup_settings(self) -> dict[str, Any]:
        """What the warm-up reads (the sections' ``warmup_reads``, the seed and the device): runs
        that agree on it share one warm-up (the loop's warmup_cache)."""
        settings: dict[str, Any] = {"seed": self.seed, "device": self.device}
        for section in self.sections():
            if section.warmup_reads:
                settings[section.name] = section.warmup_settings()
        return settings

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, benchmark: bool = False) -> "OptimizeConfig":
        """A job's config from its nested settings (what ``to_dict()`` writes; a section left
        out gets its defaults): the CLI's and the service's path. ValueError naming an unknown
        section or setting, a preset, or a benchmark-only setting (unless at its default) or
        value (accepted with ``benchmark``: benchmarks/ and tests)."""
        if not isinstance(data, dict):
            raise ValueError(f"a job config is a JSON object of sections, got {type(data).__name__}")
        top = {f.name for f in fields(cls)} - set(SECTIONS)
        unknown = sorted(set(data) - top - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown job settings {unknown}; known: {sorted(top)} and the sections {list(SECTIONS)}")
        built: dict[str, Any] = {name: data[name] for name in top if name in data}
        for name, section in SECTIONS.items():
            settings = data.get(name, {})
            if not isinstance(settings, dict):
                raise ValueError(f"{name}: a section is a JSON object of settings, got {type(settings).__name__}")
            known = {f.name for f in fields(section)}
            unknown = sorted(f"{name}.{key}" for key in set(settings) - known)
            if unknown:
                raise ValueError(f"unknown job settings {unknown}; known in {name}: {sorted(known)}")
            if not benchmark:
                _refuse_research(name, settings)
            built[name] = section(**settings)
        return cls(**built)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "OptimizeConfig":
        """A config that ``to_dict()`` wrote under this or an older nerfsim (a job's config as
        accepted): a setting it lacks (it predates the setting) is what that run did (the field's
        ``before``, as in :meth:`differences`); one this nerfsim no longer has is dropped (it
        cannot be honoured). ValueError for one saved before the sections (its ``scene`` was a
        name). Values are not checked here: ``validate()`` does."""
        if not all(isinstance(data.get(name, {}), dict) for name in SECTIONS):
            raise ValueError("a saved config from before the sections: its settings are not in sections")

        def values(kind: type, saved: dict[str, Any]) -> dict[str, Any]:
            return {f.name: saved[f.name] if f.name in saved else _before(f) for f in fields(kind)}

        built = {name: value for name, value in values(cls, data).items() if name not in SECTIONS}
        for name, section in SECTIONS.items():
            built[name] = section(**values(section, data.get(name, {})))
        return cls(**built)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The settings (``section.field``, or a top-level name) in which a saved config
        (``to_dict()`` after a JSON round trip) differs from this one. A setting the saved config
        lacks (it predates the setting) counts as what that run did: the field's ``before``
        metadata where the default changed what a run does (e.g. real photos in the final
        training), else its default. A saved config from before the sections differs."""
        wanted = _flatten(plain(self.to_dict()))
        defaults = {f.name: _before(f) for f in fields(self) if f.name not in SECTIONS}
        for name, section in SECTIONS.items():
            defaults.update({f"{name}.{f.name}": _before(f) for f in fields(section)})
        completed = {**plain(defaults), **_flatten(plain(saved))}
        return sorted(k for k in set(wanted) | set(completed) if wanted.get(k) != completed.get(k))


def plain(data):
    """JSON round trip: tuples become lists, so configs compare equal after a save and load."""
    return json.loads(json.dumps(data))


def merged(settings: dict[str, Any], *changes: dict[str, Any]) -> dict[str, Any]:
    """Nested settings with ``changes`` on top, section by section (a section's fields not in a
    change stay): what tests and benchmarks build their configs from."""
    result = {name: dict(value) if name in SECTIONS else value for name, value in settings.items()}
    for change in changes:
        for name, value in change.items():
            result[name] = {**result.get(name, {}), **value} if name in SECTIONS else value
    return result


def _default(f: Field) -> Any:
    return f.default if f.default_factory is MISSING else f.default_factory()


def _before(f: Field) -> Any:
    """What a run did before the field existed."""
    return f.metadata["before"] if "before" in f.metadata else _default(f)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{"budget": {"final_images": 0}} -> {"budget.final_images": 0}; other keys stay."""
    flat = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def _refuse_research(name: str, settings: dict[str, Any]) -> None:
    # At their defaults they change nothing: what to_dict() writes reads back.
    defaults = {f.name: _default(f) for f in fields(SECTIONS[name])}
    research = sorted(f"{name}.{key}" for key, value in settings.items()
                      if f"{name}.{key}" in RESEARCH_FIELDS and value != defaults[key])
    if research:
        raise ValueError(f"{research}: benchmark-only settings, not job settings (benchmarks/ sets them)")
    for key, value in settings.items():
        if RESEARCH_VALUES.get(f"{name}.{key}", MISSING) == value:
            raise ValueError(f"{name}.{key}: {value!r} is a benchmark-only value, not a job setting")


def _check_across_sections(config: OptimizeConfig) -> None:
    """The rules that span sections, after every section passed its own."""
    outer, psi, budget = config.outer, config.psi, config.budget
    if outer.method in ("neural-sim", "random-search", "reinforce") and not psi.learnable:
        fail("psi.learnable", f"method {outer.method!r} learns psi, but no part is learnable")
    if config.final.init == "warmup" and config.detector.warmup_steps < 1:
        fail("final.init", "'warmup' starts the final detector from the warmed-up detector: "
                           "needs detector.warmup_steps >= 1")
    if outer.method == "oracle" and psi.oracle is None:
        fail("psi.oracle", "method 'oracle' needs the target's distribution (Psi.from_target arguments)")
    if outer.method != "neural-sim":
        return
    # torch: validation runs in the worker and the CLI, never on import.
    from optimizer.estimators import estimator_parts

    bins = psi.initial.get("azimuth_bins", PsiConfig.azimuth_bins)
    if outer.estimator == "lookahead":
        if set(psi.learnable) != {"azimuth"}:
            fail("psi.learnable", f"the 'lookahead' estimator learns the azimuth bins only, got {psi.learnable}; "
                                  "use learnable=['azimuth'], or the 'both' estimator for other parts")
        if budget.inner_steps < 1:
            fail("budget.inner_steps",
                 "the 'lookahead' estimator fine-tunes a detector copy per bin: needs inner_steps >= 1")
        if budget.images_per_iteration % bins:
            fail("budget.images_per_iteration", f"the 'lookahead' estimator renders every scene at each of the {bins} "
                                                f"azimuth bins, so it must be a multiple of {bins}, "
                                                f"got {budget.images_per_iteration}")
        return
    pathwise, score = estimator_parts(outer.estimator)
    missing = sorted(set(psi.learnable) - (pathwise | score))
    if missing:
        fail("outer.estimator", f"{outer.estimator!r} gives no gradient to the learnable parts {missing} (only "
                                f"{sorted(REPARAMETERISED_PARTS)} have a pathwise gradient); use 'score' or 'both'")
    if score and outer.alignment_normalisation == "standardise" and budget.images_per_iteration < 2:
        fail("budget.images_per_iteration", "standardised alignments need at least 2 images per iteration")
    # Presets set enumerate_bins whatever the job learns: without the azimuth learnt by the
    # score function it has nothing to enumerate and does nothing.
    if outer.enumerate_bins and "azimuth" in score & set(psi.learnable) and budget.images_per_iteration % bins:
        fail("budget.images_per_iteration", f"enumerate_bins renders every scene at each of the {bins} azimuth bins, "
                                            f"so it must be a multiple of {bins}, got {budget.images_per_iteration}")


@dataclass
class Progress:
    """One progress report of a running job."""

    stage: Stage
    iteration: int
    """Outer iteration (0-based) during 'outer'; otherwise the step within the stage."""
    total: int
    """Number of iterations or steps of this stage."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest numbers: val_loss, train_loss, hypergradient norm, mAP, ..."""
    psi: dict[str, Any] = field(default_factory=dict)
    """Psi snapshot (Psi.snapshot()): bin probabilities, elevation/distance/lighting stats."""
    samples: list[Path] = field(default_factory=list)
    """A few of the newest rendered images with their boxes drawn (PNG files in the job folder)."""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [str(p) for p in self.samples]
        return data
