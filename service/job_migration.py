"""Job records stored before the one job shape (session 13): flat fields plus an ``options``
catch-all. :func:`spec_from_flat` turns one into the JobSpec's sections, so a job accepted then
still loads, lists, retries and runs with every setting it was sent."""

from __future__ import annotations

from typing import Any

FLAT_FIELDS = {
    "assets": ("scene", "assets"),
    "backgrounds": ("scene", "backgrounds"),
    "procedural_backgrounds": ("scene", "procedural_backgrounds"),
    "fov_deg": ("scene", "fov_deg"),
    "target_val": ("targets", "val"),
    "target_test": ("targets", "test"),
    "method": ("outer", "method"),
    "estimator": ("outer", "estimator"),
    "inverse_hessian": ("hypergradient", "inverse_hessian"),
    "learnable": ("psi", "learnable"),
    "psi": ("psi", "initial"),
    "detector": ("detector", "arch"),
    "detector_weights": ("detector", "weights"),
    "image_size": ("detector", "image_size"),
}
"""Top-level fields of the flat shape -> (section, field)."""
FLAT_OPTIONS = {
    **{name: ("scene", name) for name in ("harvest_backgrounds", "resting_poses", "canonical_pose_share",
                                          "several_objects", "photometric")},
    **{name: ("outer", name) for name in ("enumerate_bins", "alignment_objective", "alignment_normalisation",
                                          "pose_group", "baseline_decay", "search_metric")},
    **{name: ("hypergradient", name) for name in ("inverse_hessian_steps", "hessian_layers", "hessian_product",
                                                  "damping", "neumann_scale")},
    "share_classes": ("psi", "share_classes"),
    "psi_priors": ("psi", "priors"),
    "oracle_psi": ("psi", "oracle"),
    "psi_learning_rate": ("psi", "learning_rate"),
    "psi_warmup_iterations": ("psi", "warmup_iterations"),
    "entropy_weight": ("psi", "entropy_weight"),
    **{name: ("detector", name) for name in ("inner_learning_rate", "inner_optimizer", "inner_batch_size",
                                             "warmup_steps", "val_batch_size", "val_map_every", "sample_images")},
    "final_image_size": ("final", "image_size"),
    "final_batch_size": ("final", "batch_size"),
    "final_init": ("final", "init"),
    "final_trainer_overrides": ("final", "trainer_overrides"),
    "final_real_share": ("final", "real_share"),
    "real_only_baseline": ("final", "real_only_baseline"),
    "uniform_baseline": ("final", "uniform_baseline"),
}
"""Fields of the flat shape's ``options`` -> (section, field)."""
KEPT = ("preset", "seed", "device", "budget")
"""Fields with the same place in both shapes."""


def is_flat(data: dict[str, Any]) -> bool:
    """Whether a stored job record has the flat shape (its job fields beside its bookkeeping)."""
    return "spec" not in data and "target_val" in data


def spec_from_flat(data: dict[str, Any]) -> dict[str, Any]:
    """The JobSpec (as a dict) of a flat job record. A record stored before presets ran the
    paper's method without a baseline arm, as then. A field neither shape knows any more is
    left out (as records always dropped retired settings)."""
    options = dict(data.get("options") or {})
    if "preset" not in data:
        data = {**data, "preset": "neural-sim"}
        options = {"uniform_baseline": False, **options}
    spec: dict[str, Any] = {name: data[name] for name in KEPT if data.get(name) is not None}
    for source, table in ((data, FLAT_FIELDS), (options, FLAT_OPTIONS)):
        for name, (section, field) in table.items():
            if source.get(name) is not None:
                spec.setdefault(section, {})[field] = source[name]
    return spec
