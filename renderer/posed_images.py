"""Posed image sets in nerfstudio / instant-ngp ``transforms.json`` format.

One ``transforms.json`` beside (or above) its images: pinhole intrinsics (``fl_x``/``fl_y``,
or ``camera_angle_x`` as instant-ngp and the Blender sets write it; optional ``cx``, ``cy``,
``w``, ``h``), given once or on every frame, and ``frames`` with a ``file_path`` and a 4x4
OpenGL camera-to-world ``transform_matrix``. Images are RGBA, or RGB with a ``mask_path``
(white = object), or plain RGB (all opaque). ``train_filenames`` / ``test_filenames`` pick the
splits, and a ``nerfsim`` block written by :func:`renderer.mesh.build_posed_image_set` gives the
object's bounding box.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor


class PosedImageError(ValueError):
    """A posed image set that cannot be used (names the file and the problem)."""


@dataclass
class PosedImages:
    """Images of one object with their cameras (shared pinhole intrinsics)."""

    rgb: Float[Tensor, "N H W 3"]
    """Colour in [0, 1], straight (not premultiplied by alpha)."""
    alpha: Float[Tensor, "N H W 1"]
    """Opacity in [0, 1]: 1 on the object."""
    c2w: Float[Tensor, "N 3 4"]
    """Camera-to-world matrices, OpenGL axes (x right, y up, looking down -z)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    aabb: Float[Tensor, "2 3"] | None
    """Object bounding box ``[min, max]`` from the ``nerfsim`` block, if the set has one."""
    image_paths: list[Path]


_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")


def load_posed_images(path: Path | str, split: Literal["train", "test", "all"] = "train") -> PosedImages:
    """Read the posed image set in directory ``path`` (or the ``transforms.json`` file ``path``).

    ``split="train"`` reads the frames of ``train_filenames`` (all frames when the file has no
    split lists), ``"test"`` those of ``test_filenames``, ``"all"`` every frame.
    """
    path = Path(path)
    transforms_path = path if path.suffix == ".json" else path / "transforms.json"
    if not transforms_path.is_file():
        raise PosedImageError(f"{transforms_path}: not found (a posed image set needs a transforms.json)")
    try:
        meta = json.loads(transforms_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PosedImageError(f"{transforms_path}: invalid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise PosedImageError(f"{transforms_path}: expected a JSON object at the top level")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise PosedImageError(f"{transforms_path}: no frames")
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise PosedImageError(f"{transforms_path}: frame {index} is not a JSON object")
    root = transforms_path.parent

    frames = _split_frames(transforms_path, meta, frames, root, split)
    intrinsics = _shared_intrinsics(transforms_path, meta, frames)

    rgbs, alphas, poses, image_paths = [], [], [], []
    width, height = intrinsics.get("w"), intrinsics.get("h")
    for index, frame in enumerate(frames):
        image_path = _frame_file(transforms_path, root, frame, "file_path", index)
        rgba = _read_image(image_path, transforms_path, with_alpha=True)
        if "mask_path" in frame:
            mask_path = _frame_file(transforms_path, root, frame, "mask_path", index)
            mask = _read_image(mask_path, transforms_path, with_alpha=False)
            if mask.shape[:2] != rgba.shape[:2]:
                raise PosedImageError(
                    f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is "
                    f"{rgba.shape[1]}x{rgba.shape[0]} (in {transforms_path})"
                )
            rgba[..., 3] = mask
        if width is None:
            width, height = rgba.shape[1], rgba.shape[0]
        if (rgba.shape[1], rgba.shape[0]) != (width, height):
            raise PosedImageError(
                f"{image_path}: image is {rgba.shape[1]}x{rgba.shape[0]}, expected {width}x{height} "
                f"(from {transforms_path})"
            )
        rgbs.append(rgba[..., :3])
        alphas.append(rgba[..., 3:])
        poses.append(_pose(transforms_path, frame, index))
        image_paths.append(image_path)

    if "fl_x" in intrinsics:
        fx = float(intrinsics["fl_x"])
        fy = float(intrinsics.get("fl_y", fx))
    elif "camera_angle_x" in intrinsics:
        fx = 0.5 * width / math.tan(0.5 * float(intrinsics["camera_angle_x"]))
        fy = fx
        if "camera_angle_y" in intrinsics:
            fy = 0.5 * height / math.tan(0.5 * float(intrinsics["camera_angle_y"]))
    else:
        raise PosedImageError(f"{transforms_path}: no focal length (fl_x or camera_angle_x)")

    aabb = meta.get("nerfsim", {}).get("aabb") if isinstance(meta.get("nerfsim"), dict) else None
    if aabb is not None:
        aabb = torch.tensor(aabb, dtype=torch.float32)
        if aabb.shape != (2, 3) or not bool((aabb[1] > aabb[0]).all()):
            raise PosedImageError(
                f"{transforms_path}: nerfsim.aabb must be [[min x, y, z], [max x, y, z]], got {aabb.tolist()}"
            )

    return PosedImages(
        rgb=torch.from_numpy(np.stack(rgbs)),
        alpha=torch.from_numpy(np.stack(alphas)),
        c2w=torch.from_numpy(np.stack(poses)),
        fx=fx,
        fy=fy,
        cx=float(intrinsics.get("cx", width / 2)),
        cy=float(intrinsics.get("cy", height / 2)),
        width=int(width),
        height=int(height),
        aabb=aabb,
        image_paths=image_paths,
    )


def _split_frames(transforms_path: Path, meta: dict, frames: list, root: Path, split: str) -> list[dict]:
    if split == "all":
        return frames
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    key = f"{split}_filenames"
    if key not in meta:
        if split == "train":
            return frames
        raise PosedImageError(f"{transforms_path}: no test split (no {key} list)")
    wanted = {(root / name).resolve() for name in meta[key]}
    chosen = [f for f in frames if (root / str(f.get("file_path", ""))).resolve() in wanted]
    known = {(root / str(f.get("file_path", ""))).resolve() for f in frames}
    unknown = sorted(str(p) for p in wanted - known)
    if unknown:
        raise PosedImageError(f"{transforms_path}: {key} names files that are not frames: {', '.join(unknown[:5])}")
    if not chosen:
        raise PosedImageError(f"{transforms_path}: no frames in the {split} split")
    return chosen


def _shared_intrinsics(transforms_path: Path, meta: dict, frames: list[dict]) -> dict:
    """The intrinsics, given at the top level or per frame (then they must agree)."""
    intrinsics = {key: meta[key] for key in _INTRINSICS if key in meta}
    for index, frame in enumerate(frames):
        for key in _INTRINSICS:
            if key in frame:
                if key in intrinsics and not math.isclose(float(frame[key]), float(intrinsics[key]), rel_tol=1e-6):
                    raise PosedImageError(
                        f"{transforms_path}: frame {index} has {key}={frame[key]}, others {intrinsics[key]}; "
                        "all frames must share one camera"
                    )
                intrinsics[key] = frame[key]
    return intrinsics


def _frame_file(transforms_path: Path, root: Path, frame: dict, key: str, index: int) -> Path:
    if key not in frame:
        raise PosedImageError(f"{transforms_path}: frame {index} has no {key}")
    path = root / str(frame[key])
    if not path.is_file() and not path.suffix and path.with_suffix(".png").is_file():
        path = path.with_suffix(".png")  # Blender-style sets name frames without an extension
    if not path.is_file():
        raise PosedImageError(f"{path}: image named by frame {index} of {transforms_path} not found")
    return path


def _read_image(path: Path, transforms_path: Path, with_alpha: bool) -> np.ndarray:
    """[H, W, 4] float RGBA (alpha 1 when the file has none), or [H, W] grey for masks."""
    try:
        with Image.open(path) as image:
            if not with_alpha:
                return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return np.asarray(image.convert("RGBA" if has_alpha else "RGB").convert("RGBA"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise PosedImageError(f"{path}: not a readable image (named by {transforms_path}: {error})") from error


def _pose(transforms_path: Path, frame: dict, index: int) -> np.ndarray:
    try:
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float32)
    except (KeyError, ValueError, TypeError) as error:
        raise PosedImageError(f"{transforms_path}: frame {index} has no valid transform_matrix ({error})") from error
    if matrix.shape not in ((4, 4), (3, 4)) or not np.isfinite(matrix).all():
        raise PosedImageError(f"{transforms_path}: frame {index} transform_matrix must be a finite 4x4 or 3x4 matrix")
    return matrix[:3]
