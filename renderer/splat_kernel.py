"""Images whose objects are all splats, without gradients, through a compiled CPU compositor.

The torch rasteriser (``renderer.splat_raster``) turns every (Gaussian, pixel) pair into a packed
sample and merges the objects' samples with sorts and gathers over tens of millions of pairs per
640x480 image. Rendering a dataset needs no gradients, so this path does what 3DGS's CUDA
rasteriser does, in C (``splat_kernel.c``): the Gaussians of all objects in an image, projected
by torch exactly as the torch path projects them (``renderer.splat_raster.project``), are sorted
front to back by depth, listed per 16 x 16 pixel tile, and each pixel walks its tile's list.

Same images as the torch path up to float rounding: the same pairs (q <= q_max inside the
footprint box), the same alpha clamp, each object stopping before the pair that would take its
own transmittance to T_MIN, and the same per-object masks, "alone" opacities and depths. Pairs
of one pixel come in the order of their Gaussians' depth z (the torch path orders by
``z * stretch``, the same order but where two depths tie within rounding).

The C file is compiled at first use with the system C compiler (``$CC``, else ``cc``; OpenMP
where the compiler has it, for ``torch.get_num_threads()`` threads) into a cache folder
(``$NERFSIM_KERNEL_DIR``, else ``~/.cache/nerfsim/kernels``), named by the source's hash.
Without a compiler, or where the folder cannot be written, :func:`load_kernel` returns None
(logged once) and the renderer keeps the torch path; a library already in the folder needs no
compiler (an image without one can ship it, built in the same folder layout).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from renderer.camera import Size, image_shape
from renderer.scene_types import SceneParams
from renderer.splat_raster import ALPHA_MAX, T_MIN, footprints, project, ray_stretch

SOURCE = Path(__file__).with_name("splat_kernel.c")
FLAGS = ("-O3", "-shared", "-fPIC")
log = logging.getLogger(__name__)
_loaded: dict[str, ctypes.CDLL | None] = {}


def kernel_dir() -> Path:
    """Where built kernels are kept: ``$NERFSIM_KERNEL_DIR``, else ``~/.cache/nerfsim/kernels``."""
    return Path(os.environ.get("NERFSIM_KERNEL_DIR") or Path.home() / ".cache" / "nerfsim" / "kernels")


def load_kernel() -> ctypes.CDLL | None:
    """The compiled compositor (built into :func:`kernel_dir` on first use), or None where it
    cannot be built."""
    compiler = os.environ.get("CC", "cc")
    if compiler not in _loaded:
        try:
            _loaded[compiler] = _build(compiler)
        except OSError as error:  # an unwritable cache folder, a library that does not load
            log.warning("splat kernel: unavailable (%s); splat scenes render through torch", error)
            _loaded[compiler] = None
    return _loaded[compiler]


def _build(compiler: str) -> ctypes.CDLL | None:
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + compiler.encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
    library = kernel_dir() / f"splat_kernel_{tag}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final name and renamed: worker processes may build it at once.
        handle, name = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(handle)
        error = _compile(compiler, Path(name))
        if error:
            Path(name).unlink(missing_ok=True)
            log.warning("splat kernel: cannot compile %s with %r (%s); splat scenes render through torch", SOURCE.name,
                        compiler, error)
            return None
        os.replace(name, library)
    kernel = ctypes.CDLL(str(library))
    kernel.nerfsim_composite_splats.restype = ctypes.c_int
    return kernel


def _compile(compiler: str, out: Path) -> str:
    """Compile the kernel into ``out`` (with OpenMP where the compiler has it); the error, or ""."""
    error = ""
    for openmp in (["-fopenmp"], []):
        try:
            run = subprocess.run([compiler, *FLAGS, *openmp, str(SOURCE), "-o", str(out), "-lm"],
                                 capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as failure:
            return str(failure) or type(failure).__name__
        if run.returncode == 0:
            return ""
        error = run.stderr.strip()[-500:] or f"exit status {run.returncode}"
    return error


def render_splat_chunk(
    kernel: ctypes.CDLL, objects: Sequence, params: SceneParams, rotation: Tensor, translation: Tensor, gain: Tensor,
    fov_deg: float, size: Size,
) -> tuple[Tensor, ...]:
    """``SceneRenderer._render_chunk``'s (rgb, alpha, masks, alone, depth) for images whose
    present slots all hold float32 splats on CPU (``objects``: the renderer's objects)."""
    height, width = image_shape(size)
    batch, slots = params.batch_size, params.num_slots
    pixels = height * width
    rgb = torch.zeros(batch, pixels, 3)
    alpha, depth_sum = torch.zeros(batch, pixels), torch.zeros(batch, pixels)
    masks, alone = torch.zeros(batch, slots, pixels), torch.zeros(batch, slots, pixels)
    stretch = ray_stretch(size, fov_deg, torch.float32, torch.device("cpu")).contiguous()
    splats: dict[int, tuple] = {}  # object id: its Gaussians and their covariances, shared by its views
    for image in range(batch):
        parts = []
        for slot in params.present[image].nonzero().squeeze(-1).tolist():
            object_id = int(params.object_ids[image, slot])
            if object_id not in splats:
                gaussians = objects[object_id].gaussians.detach()
                splats[object_id] = gaussians, gaussians.covariances()
            gaussians, covariances = splats[object_id]
            p = project(gaussians, rotation[image, slot], translation[image, slot], fov_deg, size, covariances)
            if p is None:
                continue
            q_max, boxes = footprints(p.u, p.v, p.var_x, p.var_y, p.opacity, height, width)
            # Non-finite Gaussians (whose boxes are garbage) get an empty box: the kernel skips them.
            finite = torch.stack([p.u, p.v, p.opacity, q_max, p.z, *p.conic.T, *p.colour.T]).isfinite().all(dim=0)
            boxes[~finite] = torch.tensor([0, 0, -1, -1])
            parts.append((p.u, p.v, p.conic, p.opacity, q_max, p.colour * gain[image, slot], p.z,
                          torch.full_like(p.u, slot, dtype=torch.int32), boxes.int()))
        if not parts:
            continue
        u, v, conic, opacity, q_max, colour, z, slot_of, boxes = (torch.cat(column) for column in zip(*parts))
        order = torch.argsort(z, stable=True)
        columns = (u, v, conic, opacity, q_max, colour, z, slot_of, boxes)
        arrays = [x.index_select(0, order).contiguous().numpy() for x in columns]
        outputs = [rgb[image], alpha[image], depth_sum[image], masks[image], alone[image]]
        status = kernel.nerfsim_composite_splats(
            ctypes.c_int(int(order.numel())), *(_pointer(a) for a in arrays), ctypes.c_int(height), ctypes.c_int(width),
            ctypes.c_int(slots), _pointer(stretch.numpy()), ctypes.c_float(ALPHA_MAX), ctypes.c_float(T_MIN),
            *(_pointer(o.numpy()) for o in outputs), ctypes.c_int(torch.get_num_threads()),
        )
        if status != 0:
            raise MemoryError("splat kernel: out of memory compositing an image")
    depth = torch.where(alpha > 1e-4, depth_sum / alpha.clamp(min=1e-4), torch.zeros_like(depth_sum))

    def image_of(x: Tensor, channels: int) -> Tensor:
        return x.reshape(batch, height, width, channels).permute(0, 3, 1, 2)

    return (image_of(rgb, 3), image_of(alpha[..., None], 1), masks.reshape(batch, slots, height, width),
            alone.reshape(batch, slots, height, width), image_of(depth[..., None], 1))


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    if not array.flags["C_CONTIGUOUS"]:
        raise ValueError("splat kernel: arrays must be contiguous")
    return ctypes.c_void_p(array.ctypes.data)
