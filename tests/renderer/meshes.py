"""A small textured box mesh written by tests (no shared assets needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from renderer.object_field import ObjectFieldConfig

# The box in its file (z up, like YCB scans, and not centred): 0.1 wide (x), 0.06 deep (y),
# 0.2 tall (z). In the object frame it is 0.1 x 0.2 x 0.06, its front (file -y) facing +z.
FILE_LOW = np.array([0.02, -0.05, 0.0])
FILE_HIGH = np.array([0.12, 0.01, 0.2])
HALF = (0.05, 0.1, 0.03)

RED, GREEN, BLUE, YELLOW, CYAN, GREY = (
    (0.8, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.1, 0.8), (0.8, 0.8, 0.1), (0.1, 0.7, 0.7), (0.5, 0.5, 0.5)
)


def write_box(
    folder: Path, front=(RED, GREEN, BLUE, YELLOW), top=CYAN, other=GREY, *, texture: bool = True, mtl: bool = True
) -> Path:
    """A textured box OBJ: its front face has four coloured quadrants (top-left, top-right,
    bottom-left, bottom-right as seen from the front, z up), its top one colour, the rest another."""
    folder.mkdir(parents=True, exist_ok=True)
    # Texture atlas of three 32 x 32 tiles: front quadrants, top, other.
    atlas = np.zeros((32, 96, 3))
    atlas[:16, :16], atlas[:16, 16:32], atlas[16:, :16], atlas[16:, 16:32] = front
    atlas[:, 32:64], atlas[:, 64:] = top, other
    Image.fromarray(np.round(atlas * 255).astype(np.uint8)).save(folder / "box.png")

    (x0, y0, z0), (x1, y1, z1) = FILE_LOW, FILE_HIGH
    corners = [(x, y, z) for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)]  # index = 4z + 2y + x
    # Quads (counter-clockwise seen from outside) with the atlas tile they use; the first is the
    # front (-y): bottom-left, bottom-right, top-right, top-left seen from the front.
    front_quad, top_quad = [0, 1, 5, 4], [4, 5, 7, 6]
    side_quads = [[2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5], [0, 2, 3, 1]]
    quads = [(front_quad, 0), (top_quad, 1)] + [(quad, 2) for quad in side_quads]
    inset = 1.5 / 96  # keep bilinear lookups inside the tile
    lines = ["mtllib box.mtl"] if mtl else []
    lines += [f"v {x} {y} {z}" for x, y, z in corners]
    for _, tile in quads:
        u0, u1 = tile / 3 + inset, (tile + 1) / 3 - inset
        lines += [f"vt {u} {v}" for u, v in ((u0, 0.05), (u1, 0.05), (u1, 0.95), (u0, 0.95))]
    lines.append("usemtl box")
    for q, (quad, _) in enumerate(quads):
        lines.append("f " + " ".join(f"{v + 1}/{4 * q + k + 1}" for k, v in enumerate(quad)))
    (folder / "box.obj").write_text("\n".join(lines) + "\n")
    if mtl:
        (folder / "box.mtl").write_text("newmtl box\nKd 1 1 1\n" + ("map_Kd box.png\n" if texture else ""))
    return folder / "box.obj"


SMALL_MODEL = ObjectFieldConfig(plane_resolutions=(16, 32), plane_components=8, hidden_dim=32, occupancy_resolution=32)
"""An object NeRF small enough to train in seconds on the 32 px test views."""
