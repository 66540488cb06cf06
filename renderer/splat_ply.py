"""3D Gaussian splat ``.ply`` files in and out, and putting a splat into the nerfsim object frame.

Read: the Inria 3DGS layout (``x y z [nx ny nz] f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3``,
SH degree 0-3, ``f_rest`` channel-major as the Inria code writes it) and nerfstudio's
``ns-export gaussian-splat`` output, which is the same layout, or for SH degree 0 with
``--ply-color-mode rgb`` uint8 ``red green blue`` (or a three-value ``colors`` list) instead of
``f_dc_*``; the colours become DC coefficients. Write: the Inria layout.

Aligning a capture with nerfsim's object frame (metres, y up, origin at the bounding-box centre):
``normalise_frame(gaussians, up_axis=..., scale=...)`` does what mesh assets get from
``load_textured_mesh(up_axis=, scale=)``. nerfstudio exports the splat in its own world frame
*after* the dataparser transform (orientation, centring and scaling of the camera poses; the
export's header says ``Vertical Axis: z``, kept in the report) and drops that transform: use
``up_axis="z"``, and ``scale`` = 1 / the ``scale`` in the run's ``dataparser_transforms.json``
when the capture's poses were metric (else: the object's real size over its size in the file).
The Inria code keeps COLMAP's frame, whose up axis is arbitrary: rotate the file first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from renderer.splat import Gaussians, SplatError
from renderer.splat_sh import C0, rotate_sh

logger = logging.getLogger(__name__)

_GEOMETRY = ["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_DC = ["f_dc_0", "f_dc_1", "f_dc_2"]
_RGB = ["red", "green", "blue"]


@dataclass
class SplatPlyReport:
    """What :func:`load_splat_ply` read."""

    path: str
    num_gaussians: int
    """Gaussians kept."""
    num_non_finite: int
    """Rows dropped because a value was NaN or infinite."""
    sh_degree: int
    colour_source: Literal["sh", "rgb"]
    """"sh": ``f_dc_*``/``f_rest_*`` coefficients; "rgb": 8-bit colours turned into DC terms."""
    vertical_axis: str | None
    """The up axis a ``comment Vertical Axis: <axis>`` header line names (nerfstudio writes
    one), else None."""


def load_splat_ply(path: Path | str) -> tuple[Gaussians, SplatPlyReport]:
    """Read a splat ``.ply`` (see the module docstring) into float32 :class:`Gaussians`, as they
    lie in the file (no re-centring; see :func:`normalise_frame`). Rows with NaN/Inf values are
    dropped with a warning and counted; anything else wrong raises :class:`SplatError`."""
    path = Path(path)
    if not path.is_file():
        raise SplatError(f"{path}: splat file not found")
    try:
        ply = PlyData.read(str(path))
    except Exception as error:  # plyfile raises several types for malformed headers and bodies
        raise SplatError(f"{path}: not a readable PLY file ({type(error).__name__}: {error})") from error
    if "vertex" not in [element.name for element in ply.elements]:
        raise SplatError(f"{path}: no 'vertex' element (a splat stores one vertex per Gaussian)")
    vertex = ply["vertex"]
    names = [prop.name for prop in vertex.properties]
    if vertex.count == 0:
        raise SplatError(f"{path}: the file holds no Gaussians (0 vertices)")
    if not {"f_dc_0", "red", "colors"} & set(names):
        raise SplatError(f"{path}: no colours: needs f_dc_0..2 (SH) or red, green, blue (8-bit) (has {names})")
    colour_source: Literal["sh", "rgb"] = "sh" if "f_dc_0" in names else "rgb"
    colour_fields = _DC if colour_source == "sh" else (_RGB if "red" in names else ["colors"])
    missing = [name for name in _GEOMETRY + colour_fields if name not in names]
    if missing:
        raise SplatError(f"{path}: missing vertex properties {missing} (has {names})")
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]) if n[7:].isdigit() else -1)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(len(rest))
    if degree is None or rest != [f"f_rest_{i}" for i in range(len(rest))]:
        raise SplatError(f"{path}: f_rest_* must be f_rest_0..f_rest_{{8, 23, 44}} for SH degree 1-3, got {len(rest)} fields")
    if colour_source == "rgb" and rest:
        raise SplatError(f"{path}: 8-bit colours with f_rest_* coefficients: give f_dc_0..2 for SH degree {degree}")

    def floats(name: str) -> np.ndarray:
        values = vertex[name]
        if values.dtype.kind != "f":
            raise SplatError(f"{path}: vertex property '{name}' must be float, got {values.dtype}")
        return values.astype(np.float64)

    columns = {name: floats(name) for name in _GEOMETRY + rest + (_DC if colour_source == "sh" else [])}
    if colour_source == "rgb":
        colours = _colours(path, vertex, colour_fields)
        dc = (colours - 0.5) / C0
    else:
        dc = np.stack([columns[name] for name in _DC], axis=1)
    n = vertex.count
    # Inria writes f_rest channel-major: [N, 3, K - 1] flattened.
    sh_rest = np.stack([columns[name] for name in rest], axis=1).reshape(n, 3, -1).transpose(0, 2, 1) if rest else np.zeros((n, 0, 3))

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).float()

    gaussians = Gaussians(
        means=tensor(np.stack([columns[a] for a in "xyz"], axis=1)),
        log_scales=tensor(np.stack([columns[f"scale_{i}"] for i in range(3)], axis=1)),
        quats=tensor(np.stack([columns[f"rot_{i}"] for i in range(4)], axis=1)),
        opacity_logits=tensor(columns["opacity"]),
        sh=tensor(np.concatenate([dc[:, None, :], sh_rest], axis=1)),
    )
    kept = gaussians.filtered()
    dropped = n - kept.num
    if kept.num == 0:
        raise SplatError(f"{path}: every one of its {n} Gaussians has NaN or infinite values")
    if dropped:
        logger.warning("%s: dropped %d of %d Gaussians with NaN or infinite values", path, dropped, n)
    axis = next((c.split(":", 1)[1].strip() for c in ply.comments if c.lower().startswith("vertical axis:")), None)
    return kept, SplatPlyReport(str(path), kept.num, dropped, degree, colour_source, axis)


def _colours(path: Path, vertex: PlyElement, fields: list[str]) -> np.ndarray:
    """[N, 3] colours in [0, 1] from uint8 (or float in [0, 1]) red/green/blue or a colors list."""
    if fields == ["colors"]:
        values = vertex["colors"]
        lengths = {len(row) for row in values} if values.dtype == object else set()
        if lengths != {3}:
            raise SplatError(f"{path}: vertex property 'colors' must be a list of 3 values per vertex")
        stacked = np.stack(list(values))
    else:
        stacked = np.stack([vertex[name] for name in fields], axis=1)
    if stacked.dtype == np.uint8:
        return stacked.astype(np.float64) / 255.0
    if stacked.dtype.kind == "f":
        return stacked.astype(np.float64)
    raise SplatError(f"{path}: colour properties {fields} must be uint8 (or float in [0, 1]), got {stacked.dtype}")


def save_splat_ply(gaussians: Gaussians, path: Path | str) -> None:
    """Write ``gaussians`` in the Inria layout (float32, binary little-endian; normals 0)."""
    g = gaussians.detach().to("cpu", torch.float64)
    n = g.num
    rest = g.sh[:, 1:, :].transpose(1, 2).reshape(n, -1).numpy()
    columns = {
        **{axis: g.means[:, i].numpy() for i, axis in enumerate("xyz")},
        **{name: np.zeros(n) for name in ("nx", "ny", "nz")},
        **{f"f_dc_{i}": g.sh[:, 0, i].numpy() for i in range(3)},
        **{f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])},
        "opacity": g.opacity_logits.numpy(),
        **{f"scale_{i}": g.log_scales[:, i].numpy() for i in range(3)},
        **{f"rot_{i}": g.quats[:, i].numpy() for i in range(4)},
    }
    data = np.empty(n, dtype=[(name, "<f4") for name in columns])
    for name, values in columns.items():
        data[name] = values
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


def normalise_frame(gaussians: Gaussians, up_axis: Literal["y", "z"] = "y", scale: float = 1.0) -> Gaussians:
    """The splat in nerfsim's object frame: ``up_axis`` is the file's up axis ("z" turns z up
    into y up and -y into +z, exactly as ``load_textured_mesh``), ``scale`` is metres per file
    unit, and the origin moves to the centre of :meth:`Gaussians.aabb`. Rotating a splat
    rotates its Gaussians' axes and its SH coefficients (degree >= 1) too."""
    if up_axis not in ("y", "z"):
        raise SplatError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    if not (scale > 0 and math.isfinite(scale)):
        raise SplatError(f"scale must be a positive number of metres per file unit, got {scale}")
    g = gaussians.detach()
    means, quats, sh = g.means * scale, g.quats, g.sh
    if up_axis == "z":
        # A rotation of -90 degrees about x: (x, y, z) -> (x, z, -y).
        rotation = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=means.dtype, device=means.device)
        half = math.sqrt(0.5)
        means = means @ rotation.T
        quats = _quat_multiply(torch.tensor([half, -half, 0.0, 0.0], dtype=quats.dtype, device=quats.device), quats)
        sh = rotate_sh(sh, rotation)
    moved = Gaussians(means, g.log_scales + math.log(scale), quats, g.opacity_logits, sh)
    centre = moved.aabb().mean(dim=0)
    return Gaussians(moved.means - centre, moved.log_scales, moved.quats, moved.opacity_logits, moved.sh)


def _quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of w x y z quaternions (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )
