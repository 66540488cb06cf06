"""A scene on disk: which objects (nerfsim assets or nerfstudio checkpoints) and which
backgrounds, described by a ``scene.json``:

```json
{"name": "demo", "fov_deg": 40,
 "objects": [{"name": "cracker_box", "path": "cracker_box"},
             {"name": "mug", "path": "outputs/mug/nerfacto/2024-01-01_000000/config.yml"}],
 "backgrounds": ["photos/kitchen", "photos/office"], "procedural_backgrounds": 4}
```

Paths are relative to the ``scene.json``. An object path is a nerfsim asset folder (with
``asset.json``: a NeRF, or a splat with its ``splat.ply``), a nerfstudio ``config.yml``, or a
splat ``.ply`` (put into the object frame with its ``Vertical Axis`` comment as up axis, else y). ``backgrounds`` is a folder of photographs, or a
list of them (optional; a job's uploaded background sets are one folder each);
``procedural_backgrounds`` adds that many generated textures (no files needed); ``null`` asks
for the fallback: :data:`FALLBACK_PROCEDURAL_BACKGROUNDS` textures when the scene has no
photographs (its folders, or those harvested from a job's labelled photos), none when it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from renderer.backgrounds import BackgroundSet
from renderer.raymarch import RadianceField
from renderer.resting import RestingConfig, field_pose_table
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.splat import Gaussians, SplatError, SplatObject
from renderer.splat_asset import is_splat_asset, load_splat_asset
from renderer.splat_ply import load_splat_ply, normalise_frame
from renderer.train_object import AssetError, load_object_asset

DEMO_SCENE = Path(__file__).parent / "demo_assets" / "scene.json"


class SceneError(ValueError):
    """A scene description that cannot be used (names the file and the problem)."""


@dataclass
class ObjectSpec:
    name: str
    """Class name of the object in the labels."""
    path: Path
    """nerfsim asset folder or nerfstudio ``config.yml``."""


FALLBACK_PROCEDURAL_BACKGROUNDS = 4
"""Generated textures of a scene that asks for the fallback and has no photographs."""


@dataclass
class SceneSpec:
    """What a ``scene.json`` says, with paths resolved."""

    name: str
    objects: list[ObjectSpec]
    fov_deg: float = 40.0
    backgrounds: list[Path] = field(default_factory=list)
    """Folders of background photographs, in order."""
    procedural_backgrounds: int | None = 0
    """Generated textures added to the backgrounds; None: the fallback (see the module docstring)."""
    source: Path | None = field(default=None, repr=False)

    @property
    def class_names(self) -> list[str]:
        return [o.name for o in self.objects]


def read_scene_spec(scene: str | Path | dict) -> SceneSpec:
    """``"demo"`` (the bundled demo scene), the path of a ``scene.json`` (or its folder), or a
    scene description itself (a dict as a ``scene.json`` holds, its paths absolute or relative
    to the working directory: how a job's scene comes inline in its config)."""
    if isinstance(scene, dict):
        return _scene_spec(scene, Path("."), "the inline scene")
    path = DEMO_SCENE if str(scene) == "demo" else Path(scene)
    if path.is_dir():
        path = path / "scene.json"
    if not path.is_file():
        raise SceneError(f"{path}: scene description not found (give 'demo' or a scene.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SceneError(f"{path}: not a valid scene description ({error!r})") from error
    spec = _scene_spec(raw, path.parent, str(path))
    spec.source = path
    return spec


def _scene_spec(raw: dict, folder: Path, where: str) -> SceneSpec:
    """A parsed scene description; ``folder``: what its relative paths are relative to."""
    try:
        objects = [ObjectSpec(str(o["name"]), folder / o["path"]) for o in raw["objects"]]
    except (KeyError, TypeError) as error:
        raise SceneError(f"{where}: not a valid scene description ({error!r})") from error
    if not objects:
        raise SceneError(f"{where}: the scene lists no objects")
    names = [o.name for o in objects]
    if len(set(names)) != len(names):
        raise SceneError(f"{where}: object names must be unique, got {names}")
    backgrounds = raw.get("backgrounds") or []
    if isinstance(backgrounds, str):
        backgrounds = [backgrounds]
    if not isinstance(backgrounds, list) or not all(isinstance(b, str) and b for b in backgrounds):
        raise SceneError(f"{where}: 'backgrounds' must be a folder or a list of folders, got {backgrounds!r}")
    procedural = raw.get("procedural_backgrounds", 0)
    return SceneSpec(
        name=str(raw.get("name", folder.name)),
        objects=objects,
        fov_deg=float(raw.get("fov_deg", 40.0)),
        backgrounds=[folder / b for b in backgrounds],
        procedural_backgrounds=None if procedural is None else int(procedural),
    )


def load_object(path: Path) -> RadianceField | SplatObject:
    """A nerfsim asset folder or a nerfstudio ``config.yml`` as a radiance field; a splat asset
    folder or ``.ply`` as a :class:`SplatObject`."""
    path = Path(path)
    if path.suffix == ".ply" or is_splat_asset(path):
        return SplatObject(_load_splat(path))
    if path.suffix in {".yml", ".yaml"}:
        from renderer.nerfstudio_asset import load_nerfstudio_field

        return load_nerfstudio_field(path).eval()
    if not path.exists():
        raise AssetError(f"{path}: object asset not found")
    field_model, _ = load_object_asset(path)
    return field_model


def _load_splat(path: Path) -> Gaussians:
    if path.is_dir():
        return load_splat_asset(path)[0]
    try:
        gaussians, report = load_splat_ply(path)
    except SplatError as error:
        raise AssetError(str(error)) from error
    return normalise_frame(gaussians, up_axis="z" if report.vertical_axis == "z" else "y")


def procedural_backgrounds(count: int, seed: int = 0, size: int = 256) -> BackgroundSet:
    """``count`` smooth random textures (coloured noise at a few scales): distractor
    backgrounds that need no image files."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        image = torch.zeros(1, 3, size, size)
        for cells in (2, 6, 24):
            noise = torch.rand(1, 3, cells, cells, generator=generator)
            image += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / 3
        images.append(image[0].clamp(0, 1))
    return BackgroundSet(images, [f"procedural_{i}" for i in range(count)])


def load_scene(
    spec: SceneSpec, harvested: BackgroundSet | None = None
) -> tuple[list[RadianceField | SplatObject], BackgroundSet]:
    """The scene's object fields (in class order) and its background set: its photographs,
    ``harvested`` backgrounds (cut from a job's labelled photos: renderer.harvest), then its
    procedural textures (as many as asked, or the fallback when it asks for None)."""
    fields = [load_object(o.path) for o in spec.objects]
    photos = [BackgroundSet.from_folder(folder) for folder in spec.backgrounds]
    if harvested is not None and len(harvested):
        photos.append(harvested)
    count = spec.procedural_backgrounds
    if count is None:
        count = 0 if any(len(s) for s in photos) else FALLBACK_PROCEDURAL_BACKGROUNDS
    sets = [*photos, procedural_backgrounds(count)]
    return fields, BackgroundSet([image for s in sets for image in s.images], [name for s in sets for name in s.names])


def scene_renderer(
    spec: SceneSpec, harvested: BackgroundSet | None = None, resting: RestingConfig | None = None
) -> SceneRenderer:
    """The one way a scene becomes a renderer (jobs, ``nerfsim render``, the demo): its objects on
    its backgrounds (:func:`load_scene`, with ``harvested`` ones), at the scene's field of view;
    with ``resting``, objects rest on a support plane in their stable poses (renderer.resting)."""
    fields, backgrounds = load_scene(spec, harvested)
    poses = [field_pose_table(f, resting) for f in fields] if resting is not None else None
    return SceneRenderer(SceneRendererConfig(fov_deg=spec.fov_deg), fields, backgrounds, poses)
