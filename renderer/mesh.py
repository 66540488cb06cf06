"""Textured triangle meshes: loading, rendering with mitsuba 3, posed image sets, mesh scenes.

A mesh (OBJ + MTL + one diffuse texture) is re-expressed in the nerfsim object frame (metres, y
up, origin at the centre of its axis-aligned bounding box) and rendered unlit: every pixel shows
the texture colour of the surface it sees, which is what scanned textures such as YCB's (with
their lighting baked in) are made for. Rendering uses mitsuba 3's ``aov`` integrator (the
surface albedo and the ray length per sample) with a box pixel filter, so alpha is the exact
fraction of a pixel's samples that hit the mesh. Nothing here is differentiable: the mesh
renderer makes reference images, the NeRF renderer is the differentiable one.

Cameras are nerfstudio's: OpenGL axes (x right, y up, looking down -z), camera-to-world
matrices in the object frame, square pinhole images whose focal length is
:func:`renderer.camera.focal_length`.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm import tqdm

from renderer.backgrounds import BackgroundSet
from renderer.camera import Size, band_origin, camera_ray_directions, focal_length, image_shape, object_to_camera, view_rotation
from renderer.labels import boxes_from_masks, kept_slots, visible_fractions
from renderer.photometric import Compositing, over
from renderer.scene_types import RenderBatch, SceneParams

if TYPE_CHECKING:
    import mitsuba

MIN_LLVM_VERSION = 16
"""Oldest libLLVM that mitsuba's ``llvm_ad_rgb`` variant ran on here (LLVM 15 crashed it)."""

# OpenGL cameras look down -z with x right; mitsuba's look down +z with x left.
_OPENGL_TO_MITSUBA_CAMERA = np.diag([-1.0, 1.0, -1.0, 1.0])
_NEAR_CLIP = 1e-3
"""Metres. mitsuba starts camera rays on the near plane, so its ray lengths lack the stretch
from the camera to that plane, which :func:`_near_plane_distance` adds back."""


class MeshError(ValueError):
    """A mesh that cannot be used (names the file and the problem)."""


@dataclass
class TexturedMesh:
    """A triangle mesh with one diffuse texture, in the nerfsim object frame."""

    vertices: Float[Tensor, "V 3"]
    """Metres, y up, origin at the centre of the axis-aligned bounding box."""
    faces: Int[Tensor, "F 3"]
    uvs: Float[Tensor, "V 2"]
    """Texture coordinates, OBJ convention: (0, 0) is the bottom-left corner of the texture."""
    texture: Float[Tensor, "H W 3"]
    """Diffuse colour in [0, 1], row 0 at the top of the image file."""
    half_extents: Float[Tensor, "3"]
    """Half the size of the axis-aligned bounding box (metres)."""
    source: Path
    """The OBJ file it was loaded from."""

    @property
    def aabb(self) -> Float[Tensor, "2 3"]:
        """Bounding box corners ``[min, max]`` in the object frame."""
        return torch.stack([-self.half_extents, self.half_extents])


def load_textured_mesh(obj_path: Path | str, up_axis: Literal["y", "z"] = "z", scale: float = 1.0) -> TexturedMesh:
    """Load an OBJ with its MTL and diffuse texture (``map_Kd``) into the nerfsim object frame.

    ``up_axis`` is the file's up axis: ``"z"`` for YCB scans (their objects stand on the z = 0
    plane), which become y up; ``scale`` is metres per file unit (YCB files are in metres).
    Every material the faces use must have the same texture.
    """
    obj_path = Path(obj_path)
    if not obj_path.is_file():
        raise MeshError(f"{obj_path}: mesh file not found")
    positions, texcoords, corners, mtllibs, materials_used = _parse_obj(obj_path)
    if not mtllibs:
        raise MeshError(f"{obj_path}: mesh without a texture (no 'mtllib' material library)")
    texture_path = _texture_path(obj_path, [obj_path.parent / name for name in mtllibs], materials_used)
    try:
        with Image.open(texture_path) as image:
            texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise MeshError(f"{texture_path}: texture of {obj_path} is not a readable image ({error})") from error

    # Corners sharing a position but not a texture coordinate become separate vertices.
    pairs, corner_vertex = np.unique(corners.reshape(-1, 2), axis=0, return_inverse=True)
    vertices = positions[pairs[:, 0]] * scale
    if up_axis == "z":
        # A rotation of -90 degrees about x: z up becomes y up, and -y (front) becomes +z.
        vertices = np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1)
    elif up_axis != "y":
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    vertices = vertices - (low + high) / 2
    return TexturedMesh(
        vertices=torch.from_numpy(vertices.astype(np.float32)),
        faces=torch.from_numpy(corner_vertex.reshape(-1, 3).astype(np.int64)),
        uvs=torch.from_numpy(texcoords[pairs[:, 1]].astype(np.float32)),
        texture=torch.from_numpy(texture),
        half_extents=torch.from_numpy(((high - low) / 2).astype(np.float32)),
        source=obj_path,
    )


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], set[str | None]]:
    """Positions, texture coordinates, triangle corners [F, 3, 2] as (position, texcoord)
    indices, material libraries, and the materials the faces use (None: no ``usemtl``)."""
    positions: list[list[str]] = []
    texcoords: list[list[str]] = []
    triangles: list[list[tuple[int, int]]] = []
    mtllibs: list[str] = []
    materials_used: set[str | None] = set()
    material: str | None = None
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                if tokens[0] == "v":
                    positions.append([float(x) for x in tokens[1:4]])
                    if len(positions[-1]) != 3:
                        raise ValueError("a vertex needs 3 coordinates")
                elif tokens[0] == "vt":
                    texcoords.append([float(x) for x in tokens[1:3]])
                    if len(texcoords[-1]) != 2:
                        raise ValueError("a texture coordinate needs 2 values")
                elif tokens[0] == "f":
                    corners = [_face_corner(token, len(positions), len(texcoords)) for token in tokens[1:]]
                    if len(corners) < 3:
                        raise ValueError("a face needs at least 3 corners")
                    if any(t is None for _, t in corners):
                        raise MeshError(
                            f"{path}:{number}: face without texture coordinates (v/vt); a textured mesh is needed"
                        )
                    # Fan triangulation of polygons.
                    triangles.extend([corners[0], corners[i], corners[i + 1]] for i in range(1, len(corners) - 1))
                    materials_used.add(material)
                elif tokens[0] == "usemtl":
                    material = line.split(maxsplit=1)[1].strip() if len(tokens) > 1 else None
                elif tokens[0] == "mtllib":
                    mtllibs.append(line.split(maxsplit=1)[1].strip())
            except (ValueError, IndexError) as error:
                if isinstance(error, MeshError):
                    raise
                raise MeshError(f"{path}:{number}: cannot parse {line.strip()!r} ({error})") from error
    if not triangles:
        raise MeshError(f"{path}: no faces")
    return (
        np.asarray(positions, dtype=np.float64),
        np.asarray(texcoords, dtype=np.float64),
        np.asarray(triangles, dtype=np.int64),
        mtllibs,
        materials_used,
    )


def _face_corner(token: str, num_positions: int, num_texcoords: int) -> tuple[int, int | None]:
    """Zero-based (position, texcoord) indices of an OBJ face corner ``v``, ``v/vt``, ``v//vn``
    or ``v/vt/vn`` (negative indices count back from the latest element)."""
    parts = token.split("/")

    def index(text: str, count: int, what: str) -> int:
        value = int(text)
        resolved = value - 1 if value > 0 else count + value
        if not 0 <= resolved < count:
            raise ValueError(f"{what} index {value} out of range (have {count})")
        return resolved

    position = index(parts[0], num_positions, "vertex")
    if len(parts) < 2 or not parts[1]:
        return position, None
    return position, index(parts[1], num_texcoords, "texture coordinate")


def _texture_path(obj_path: Path, mtl_paths: list[Path], materials_used: set[str | None]) -> Path:
    """The one diffuse texture of the materials the mesh uses."""
    textures: dict[str, Path | None] = {}
    for mtl_path in mtl_paths:
        if not mtl_path.is_file():
            raise MeshError(f"{mtl_path}: material library of {obj_path} not found")
        current: str | None = None
        with open(mtl_path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                tokens = line.split()
                if not tokens:
                    continue
                if tokens[0] == "newmtl" and len(tokens) > 1:
                    current = line.split(maxsplit=1)[1].strip()
                    textures.setdefault(current, None)
                elif tokens[0] == "map_Kd" and current is not None and len(tokens) > 1:
                    value = line.split(maxsplit=1)[1].strip()
                    # Options such as "-s 1 1 1" come before the file name.
                    name = tokens[-1] if value.startswith("-") else value
                    textures[current] = mtl_path.parent / name
    names = sorted(textures) if materials_used == {None} else sorted(m for m in materials_used if m is not None)
    libraries = ", ".join(str(p) for p in mtl_paths)
    if not names:
        raise MeshError(f"{obj_path}: mesh without a texture (no materials in {libraries})")
    found = set()
    for name in names:
        if name not in textures:
            raise MeshError(f"{obj_path}: material {name!r} is not defined in {libraries}")
        if textures[name] is None:
            raise MeshError(f"{obj_path}: mesh without a texture (material {name!r} in {libraries} has no map_Kd)")
        found.add(textures[name])
    if len(found) > 1:
        listed = ", ".join(map(str, sorted(found)))
        raise MeshError(f"{obj_path}: uses {len(found)} textures ({listed}); one is supported")
    texture = found.pop()
    if not texture.is_file():
        raise MeshError(f"{texture}: texture of {obj_path} not found")
    return texture


# --------------------------------------------------------------------------------------------
# mitsuba


def _llvm_version(path: Path) -> int:
    """LLVM major version from a library path such as libLLVM-19.so, libLLVM.so.19.1 or
    /usr/lib/llvm-14/lib/libLLVM.so (-1 when it cannot be told)."""
    match = re.search(r"libLLVM[-.](?:so\.)?(\d+)", path.name) or re.search(r"llvm-(\d+)", str(path))
    return int(match.group(1)) if match else -1


def find_libllvm(min_version: int = MIN_LLVM_VERSION) -> Path | None:
    """The newest system libLLVM shared library of at least ``min_version``, if any."""
    candidates = [
        Path(p)
        for pattern in ("/usr/lib/*/libLLVM*.so*", "/usr/lib/llvm-*/lib/libLLVM*.so*", "/usr/lib64/libLLVM*.so*")
        for p in glob.glob(pattern)
    ]
    usable = [p for p in candidates if _llvm_version(p) >= min_version and p.is_file()]
    return max(usable, key=lambda p: (_llvm_version(p), len(p.name)), default=None)


@functools.cache
def mitsuba_module() -> "mitsuba":
    """mitsuba with the ``llvm_ad_rgb`` variant (vectorised, multi-core), or ``scalar_rgb`` when
    no usable libLLVM is found. ``DRJIT_LIBLLVM_PATH``, when set, picks the library."""
    if "DRJIT_LIBLLVM_PATH" not in os.environ:
        library = find_libllvm()
        if library is not None:
            # Dr.Jit reads it when the variant is first set; an old LLVM it finds on its own can crash it.
            os.environ["DRJIT_LIBLLVM_PATH"] = str(library)
    import mitsuba as mi

    if "DRJIT_LIBLLVM_PATH" in os.environ:
        try:
            mi.set_variant("llvm_ad_rgb")
            return mi
        except ImportError as error:
            reason = str(error)
    else:
        reason = f"no libLLVM >= {MIN_LLVM_VERSION} found"
    warnings.warn(f"mitsuba's llvm_ad_rgb variant is unavailable ({reason}); using the slower scalar_rgb")
    mi.set_variant("scalar_rgb")
    return mi


def _mitsuba_mesh(
    mesh: TexturedMesh, vertices: np.ndarray, color_scale: np.ndarray | None = None
) -> "mitsuba.Mesh":
    """A mitsuba mesh of ``mesh`` with its vertices at ``vertices`` and its texture times
    ``color_scale`` (per channel)."""
    mi = mitsuba_module()
    texture = mesh.texture.numpy()
    if color_scale is not None:
        texture = texture * color_scale.astype(np.float32)
    bsdf = mi.load_dict(
        {
            # Two-sided so that open scans show their texture from behind too.
            "type": "twosided",
            "bsdf": {
                "type": "diffuse",
                # raw: the file's values as they are, no sRGB -> linear conversion, so rendered
                # colours equal texture colours.
                "reflectance": {"type": "bitmap", "data": mi.TensorXf(np.ascontiguousarray(texture)), "raw": True},
            },
        }
    )
    props = mi.Properties()
    props["bsdf"] = bsdf
    uvs = mesh.uvs.numpy().copy()
    uvs[:, 1] = 1 - uvs[:, 1]  # mitsuba's texture v points down the image
    out = mi.Mesh(
        mesh.source.stem, len(vertices), len(mesh.faces), props=props, has_vertex_texcoords=True
    )
    params = mi.traverse(out)
    for key, values in (
        ("vertex_positions", np.asarray(vertices, dtype=np.float32)),
        ("faces", mesh.faces.numpy().astype(np.uint32)),
        ("vertex_texcoords", uvs.astype(np.float32)),
    ):
        params[key] = type(params[key])(values.ravel())
    params.update()
    return out


def _sensor(c2w: np.ndarray, size: int, fov_deg: float, spp: int, pixel_centres: bool) -> "mitsuba.Sensor":
    """A square pinhole camera at the OpenGL camera-to-world ``c2w`` [3 or 4, 4]; with
    ``pixel_centres`` one unjittered sample per pixel, else ``spp`` random ones."""
    mi = mitsuba_module()
    to_world = np.eye(4)
    to_world[:3] = np.asarray(c2w, dtype=np.float64)[:3]
    sampler = (
        {"type": "stratified", "sample_count": 1, "jitter": False}
        if pixel_centres
        else {"type": "independent", "sample_count": spp}
    )
    return mi.load_dict(
        {
            "type": "perspective",
            "fov": fov_deg,
            "fov_axis": "x",
            "near_clip": _NEAR_CLIP,
            "far_clip": 1e4,
            "to_world": mi.ScalarTransform4f((to_world @ _OPENGL_TO_MITSUBA_CAMERA).tolist()),
            # Box filter: each pixel averages only its own samples, so alpha is exact coverage.
            "film": {
                "type": "hdrfilm", "width": size, "height": size, "pixel_format": "rgba", "rfilter": {"type": "box"}
            },
            "sampler": sampler,
        }
    )


@functools.cache
def _integrator(kind: Literal["color", "depth"]) -> "mitsuba.Integrator":
    mi = mitsuba_module()
    if kind == "depth":
        return mi.load_dict({"type": "aov", "aovs": "depth:depth"})
    # The inner direct integrator (black: the scene has no emitters) provides the alpha
    # channel: channels are R, G, B, A of the inner integrator, then albedo RGB, then depth.
    return mi.load_dict({"type": "aov", "aovs": "albedo:albedo,depth:depth", "integrator": {"type": "direct"}})


def _near_plane_distance(size: int, fov_deg: float) -> np.ndarray:
    """[H, W] distance from the camera to the near plane along each pixel's centre ray."""
    return _NEAR_CLIP / -camera_ray_directions(size, fov_deg)[..., 2].numpy()


def _render_color(
    scene: "mitsuba.Scene", c2w: np.ndarray, size: int, fov_deg: float, spp: int, seed: int
) -> np.ndarray:
    """[H, W, 5]: premultiplied colour, alpha, ray length summed over hit samples / sample count."""
    mi = mitsuba_module()
    sensor = _sensor(c2w, size, fov_deg, spp, False)
    image = np.array(mi.render(scene, sensor=sensor, integrator=_integrator("color"), spp=spp, seed=seed))
    alpha = image[..., 3:4]
    depth = image[..., 7:8] + alpha * _near_plane_distance(size, fov_deg)[..., None]
    return np.concatenate([image[..., 4:7], alpha, depth], axis=-1)


def _render_hit_depth(scene: "mitsuba.Scene", c2w: np.ndarray, size: int, fov_deg: float) -> np.ndarray:
    """[H, W] ray length at pixel centres, inf where nothing is hit."""
    mi = mitsuba_module()
    depth = np.array(
        mi.render(scene, sensor=_sensor(c2w, size, fov_deg, 1, True), integrator=_integrator("depth"), spp=1)
    )[..., 0]
    return np.where(depth > 0, depth + _near_plane_distance(size, fov_deg), np.inf)


def _straight(color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straight (not premultiplied) RGBA [H, W, 4] and hit depth [H, W, 1] from a colour render."""
    alpha = color[..., 3:4]
    covered = np.maximum(alpha, 1e-8)
    rgb = np.where(alpha > 0, color[..., :3] / covered, 0.0)
    depth = np.where(alpha > 0, color[..., 4:5] / covered, 0.0)
    return np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1), depth


def _iter_mesh_views(
    mesh: TexturedMesh, c2w: np.ndarray, size: int, fov_deg: float, spp: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    mi = mitsuba_module()
    scene = mi.load_dict({"type": "scene", "mesh": _mitsuba_mesh(mesh, mesh.vertices.numpy())})
    for i, pose in enumerate(c2w):
        yield _straight(_render_color(scene, pose, size, fov_deg, spp, seed + i))


def render_mesh_views(
    mesh: TexturedMesh,
    c2w: Float[Tensor, "N 3 4"],
    size: int,
    fov_deg: float,
    spp: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Float[Tensor, "N H W 4"], Float[Tensor, "N H W 1"]]:
    """Render ``mesh`` (unlit texture colours) from OpenGL cameras ``c2w`` in its object frame.

    Returns straight (not premultiplied) RGBA, alpha being the exact fraction of the pixel's
    ``spp`` samples that hit the mesh, and the mean ray length (metres, not z) over those
    samples, 0 where nothing was hit. Deterministic for a given ``seed``.
    """
    poses = c2w.detach().cpu().double().numpy()
    views = list(
        tqdm(
            _iter_mesh_views(mesh, poses, size, fov_deg, spp, seed),
            total=len(poses),
            disable=not progress,
            desc="mesh views",
        )
    )
    rgba = np.stack([v[0] for v in views]) if views else np.zeros((0, size, size, 4))
    depth = np.stack([v[1] for v in views]) if views else np.zeros((0, size, size, 1))
    return torch.from_numpy(rgba.astype(np.float32)), torch.from_numpy(depth.astype(np.float32))


# --------------------------------------------------------------------------------------------
# posed image sets


def orbit_cameras(
    num: int,
    distance: float,
    elevation_range_deg: tuple[float, float] = (-30.0, 75.0),
    seed: int = 0,
) -> Float[Tensor, "N 3 4"]:
    """``num`` OpenGL camera-to-object matrices looking at the origin from ``distance``, spread
    evenly (a Fibonacci lattice) over all azimuths and the elevation band, upright (no roll);
    the seed turns the lattice about the vertical axis."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (math.sin(math.radians(e)) for e in elevation_range_deg)
    i = torch.arange(num, dtype=torch.float64)
    elevation = torch.asin(low + (i + 0.5) / num * (high - low))
    golden_angle = math.pi * (3 - math.sqrt(5))
    azimuth = i * golden_angle + 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
    cam_to_obj = view_rotation(azimuth, elevation, torch.zeros_like(azimuth)).transpose(-1, -2)
    # The camera looks down its -z axis at the origin, so it sits at distance along its +z axis.
    centre = distance * cam_to_obj[..., 2:3]
    return torch.cat([cam_to_obj, centre], dim=-1).float()


def framing_distance(half_extents: Float[Tensor, "3"], fov_deg: float, margin: float = 1.05) -> float:
    """Camera distance at which the object's bounding sphere just fits the field of view."""
    radius = float(half_extents.norm())
    return margin * radius / math.sin(math.radians(fov_deg) / 2)


def build_posed_image_set(
    obj_path: Path | str,
    out_dir: Path | str,
    num_views: int = 100,
    num_test_views: int = 10,
    size: int = 128,
    fov_deg: float = 40.0,
    spp: int = 64,
    seed: int = 0,
    progress: bool = True,
    up_axis: Literal["y", "z"] = "z",
    scale: float = 1.0,
) -> Path:
    """Render a mesh from cameras around it into a nerfstudio posed image set; returns the
    path of its ``transforms.json``. ``up_axis`` and ``scale``: as :func:`load_textured_mesh`.

    ``out_dir/images/frame_NNNNN.png`` are RGBA renders (the object on a transparent
    background); ``transforms.json`` holds the pinhole intrinsics, each frame's OpenGL
    camera-to-object matrix, ``train_filenames`` / ``val_filenames`` / ``test_filenames``
    (validation = test: the held-out views) and a ``nerfsim`` block with the object's bounding
    box. Cameras cover every azimuth and elevations from -30 to 75 degrees at the distance
    where the object's bounding sphere fills the view; test views are a random subset of the
    same lattice, so they sit between training views.
    """
    mesh = load_textured_mesh(obj_path, up_axis=up_axis, scale=scale)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    total = num_views + num_test_views
    c2w = orbit_cameras(total, framing_distance(mesh.half_extents, fov_deg), seed=seed)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed + 1))
    is_test = torch.zeros(total, dtype=torch.bool)
    is_test[order[:num_test_views]] = True

    frames, train, test = [], [], []
    views = _iter_mesh_views(mesh, c2w.double().numpy(), size, fov_deg, spp, seed)
    for i, (rgba, _) in enumerate(tqdm(views, total=total, disable=not progress, desc="posed images")):
        name = f"images/frame_{i:05d}.png"
        Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(out_dir / name)
        matrix = torch.cat([c2w[i], torch.tensor([[0.0, 0.0, 0.0, 1.0]])]).tolist()
        frames.append({"file_path": name, "transform_matrix": matrix})
        (test if is_test[i] else train).append(name)

    focal = focal_length(size, fov_deg)
    source = Path(obj_path)
    transforms = {
        "camera_model": "PINHOLE",
        "fl_x": focal,
        "fl_y": focal,
        "cx": size / 2,
        "cy": size / 2,
        "w": size,
        "h": size,
        "frames": frames,
        "train_filenames": train,
        "val_filenames": test,
        "test_filenames": test,
        "nerfsim": {
            "aabb": mesh.aabb.tolist(),
            "source": f"{source.parent.name}/{source.name}",
            "units": "m",
            "frame": "object frame: y up, origin at the bounding-box centre",
            "fov_deg": fov_deg,
        },
    }
    path = out_dir / "transforms.json"
    path.write_text(json.dumps(transforms, indent=2))
    return path


# --------------------------------------------------------------------------------------------
# scenes


@dataclass
class MeshSceneRendererConfig:
    """Configuration of :class:`MeshSceneRenderer`."""

    fov_deg: float = 40.0
    """Field of view of the square camera."""
    spp: int = 64
    """Samples per pixel of the colour image (anti-aliasing; alpha is their hit fraction)."""
    min_visible: float = 0.3
    """Objects with a smaller visible fraction are dropped from the labels."""
    seed: int = 0
    """Seed of the pixel sampling; image ``i`` of a batch uses ``seed + i``."""


class MeshSceneRenderer:
    """Renders :class:`SceneParams` batches with textured meshes: the reference images (the
    "real" domain of the shift benchmark, and reference boxes for the NeRF renderer).

    Colour, alpha and depth come from one render of all objects with ``spp`` samples per pixel.
    Instance masks are hard (0/1) at pixel centres: each object is rendered alone once per
    image (one ray per pixel), and a pixel belongs to the nearest object hit there, which is the
    one a combined render sees. The same alone renders give the visible fractions. Exposure and
    colour gain scale each object's texture. Not differentiable.
    """

    def __init__(
        self,
        config: MeshSceneRendererConfig,
        meshes: Sequence[TexturedMesh],
        backgrounds: BackgroundSet | None = None,
    ) -> None:
        if not meshes:
            raise ValueError("a scene needs at least one object mesh")
        self.config = config
        self.meshes = list(meshes)
        self.backgrounds = backgrounds or BackgroundSet.empty()

    @torch.no_grad()
    def render(self, params: SceneParams, size: Size, compositing: Compositing = over) -> RenderBatch:
        """Render every image of ``params`` at ``size`` (colours clipped to [0, 1]; a rectangle is
        cut from the square of its longer side, renderer.camera); ``compositing`` puts the objects
        over the background (see SceneRenderer.render)."""
        height, width = image_shape(size)
        top, left = band_origin(size)
        band = np.s_[..., top : top + height, left : left + width]
        size = max(height, width)
        used = params.object_ids[params.present]
        if used.numel() and not 0 <= int(used.min()) <= int(used.max()) < len(self.meshes):
            raise ValueError(
                f"object ids must lie in [0, {len(self.meshes)}): the scene has {len(self.meshes)} objects, "
                f"got ids {sorted(set(used.tolist()))}"
            )
        params = params.to("cpu")
        rotation, translation = object_to_camera(
            params.azimuth, params.elevation, params.roll, params.distance, params.offset, self.config.fov_deg
        )
        gain = (params.color_gain * torch.exp2(params.exposure)[..., None]).double().numpy()
        rotation, translation = rotation.double().numpy(), translation.double().numpy()
        batch, slots = params.batch_size, params.num_slots
        color = np.zeros((batch, size, size, 5))
        masks = np.zeros((batch, slots, size, size), dtype=np.float32)
        alone = np.zeros((batch, slots, size, size), dtype=np.float32)
        mi = mitsuba_module()
        camera = np.eye(4)  # the camera frame is the world frame
        for b in range(batch):
            placed = {}
            for m in np.flatnonzero(params.present[b].numpy()):
                mesh = self.meshes[int(params.object_ids[b, m])]
                vertices = mesh.vertices.double().numpy() @ rotation[b, m].T + translation[b, m]
                placed[int(m)] = _mitsuba_mesh(mesh, vertices, gain[b, m])
            if not placed:
                continue
            scene = mi.load_dict({"type": "scene", **{f"slot{m}": shape for m, shape in placed.items()}})
            fov_deg = self.config.fov_deg
            color[b] = _render_color(scene, camera, size, fov_deg, self.config.spp, self.config.seed + b)
            hit_depth = np.full((slots, size, size), np.inf)
            for m, shape in placed.items():
                alone_scene = mi.load_dict({"type": "scene", "shape": shape})
                hit_depth[m] = _render_hit_depth(alone_scene, camera, size, fov_deg)
            hit = np.isfinite(hit_depth)
            alone[b] = hit
            nearest = hit_depth.argmin(axis=0)
            masks[b] = hit & (nearest[None] == np.arange(slots)[:, None, None])

        rgba, depth = (torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)[band] for x in _straight(color))
        alpha = rgba[:, 3:]
        background = self.backgrounds.compose(
            params.background_ids, params.background_crop, params.background_color, (height, width)
        )
        masks_t, alone_t = torch.from_numpy(masks[band].copy()), torch.from_numpy(alone[band].copy())
        boxes = boxes_from_masks(masks_t)
        visible = visible_fractions(masks_t, alone_t)
        return RenderBatch(
            rgb=compositing(rgba[:, :3] * alpha, alpha, background, masks_t).clamp(0, 1),
            alpha=alpha,
            masks=masks_t,
            depth=depth,
            boxes=boxes,
            classes=params.object_ids,
            visible=visible,
            keep=kept_slots(params.present, boxes, visible, self.config.min_visible),
        )
