"""Splat assets on disk: a folder with the splat (``splat.ply``, Inria layout, in the nerfsim object
frame) and ``asset.json`` (the same description other assets have: name, bounding box, frame,
how it was made), and the import of a captured splat ``.ply`` into one."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from renderer.splat import Gaussians, SplatError
from renderer.splat_ply import load_splat_ply, normalise_frame, save_splat_ply
from renderer.train_object import ASSET_META, AssetError

SPLAT_FILE = "splat.ply"
OBJECT_FRAME = "object frame: metres, y up, origin at the bounding-box centre"


@dataclass
class SplatAssetMeta:
    """What a saved splat asset says about itself (``asset.json``)."""

    name: str
    """Class name of the object."""
    aabb: list[list[float]]
    """Object-frame bounding box of the Gaussians (mean +- 3 sigma), metres."""
    representation: Literal["splat"] = "splat"
    """Tells a splat asset's ``asset.json`` from a NeRF asset's."""
    frame: str = OBJECT_FRAME
    """The frame the Gaussians are in (every nerfsim object's)."""
    num_gaussians: int = 0
    """Gaussians in ``splat.ply``."""
    sh_degree: int = 0
    """Spherical-harmonics degree of their colours (0-3)."""
    source: dict = field(default_factory=dict)
    """Where it came from: an imported file (with its up axis and scale), training or baking."""
    training: dict = field(default_factory=dict)
    """How it was trained or baked and how well it did, when it was."""


def is_splat_asset(folder: Path) -> bool:
    return (Path(folder) / SPLAT_FILE).is_file()


def save_splat_asset(gaussians: Gaussians, name: str, out_dir: Path, source: dict | None = None,
                     training: dict | None = None) -> SplatAssetMeta:
    """Write ``splat.ply`` and ``asset.json`` to ``out_dir`` (replaced atomically through a
    temporary folder); the Gaussians must already be in the object frame."""
    out_dir = Path(out_dir)
    meta = SplatAssetMeta(name=name, aabb=gaussians.aabb().tolist(), num_gaussians=gaussians.num,
                          sh_degree=gaussians.degree, source=source or {}, training=training or {})
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_splat_ply(gaussians, staging / SPLAT_FILE)
    (staging / ASSET_META).write_text(json.dumps(asdict(meta), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return meta


def load_splat_asset(folder: Path) -> tuple[Gaussians, SplatAssetMeta]:
    """Load a folder written by :func:`save_splat_asset`; :class:`AssetError` naming the file."""
    folder = Path(folder)
    meta_path = folder / ASSET_META
    try:
        meta = SplatAssetMeta(**json.loads(meta_path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise AssetError(f"{meta_path}: not a valid splat asset description ({error})") from error
    try:
        gaussians, _ = load_splat_ply(folder / SPLAT_FILE)
    except SplatError as error:
        raise AssetError(str(error)) from error
    return gaussians, meta


def import_splat(ply_path: Path, name: str, out_dir: Path, up_axis: Literal["y", "z"] | None = None,
                 scale: float = 1.0) -> SplatAssetMeta:
    """A captured splat ``.ply`` as a splat asset: ``up_axis`` (default: the file's ``Vertical
    Axis`` comment, as nerfstudio writes it, else "y") and ``scale`` (metres per file unit) as in
    ``renderer.splat_ply.normalise_frame``."""
    gaussians, report = load_splat_ply(ply_path)
    axis = up_axis or (report.vertical_axis if report.vertical_axis in ("y", "z") else "y")
    gaussians = normalise_frame(gaussians, up_axis=axis, scale=scale)
    source = {"file": Path(ply_path).name, "up_axis": axis, "scale": scale, "dropped_non_finite": report.num_non_finite,
              "colour_source": report.colour_source}
    return save_splat_asset(gaussians, name, out_dir, source=source)


@torch.no_grad()
def opaque_centres(gaussians: Gaussians, min_opacity: float = 0.5) -> Float[Tensor, "P 3"]:
    """Centres of the Gaussians at least ``min_opacity`` opaque at their peak (all finite ones
    if none is): the splat's counterpart of a NeRF's opaque cells."""
    g = gaussians.detach().filtered()
    opaque = g.means[torch.sigmoid(g.opacity_logits) >= min_opacity]
    return (opaque if opaque.shape[0] else g.means).float().cpu()
