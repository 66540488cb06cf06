"""Objects from nerfstudio checkpoints (``config.yml`` + ``nerfstudio_models/step-*.ckpt``).

Loaded without the training data folder and fully offline:
- ``config.yml`` is read with a YAML loader that only names objects of nerfstudio, pathlib
  and a few standard modules, and calls none of them: config dataclasses are created without
  ``__init__``, only paths and enums are built from arguments (nerfstudio's own loader would
  run anything the file names, e.g. ``nerfstudio.utils.scripts.run_command``), and the
  model's ``_target`` must be a nerfstudio model class.
- The checkpoint is read with ``torch.load(weights_only=True)``; only the model's tensors are
  used. A checkpoint that needs arbitrary unpickling is refused unless the caller trusts it.
- Models are built from their config with the scene box and appearance-embedding count read
  from the weights, and with nerfacto's LPIPS metric (which downloads AlexNet) replaced: the
  metric is never used for rendering.

The object frame (metric, centred, y up) maps into the model's frame through the data parser's
``dataparser_transforms.json`` that nerfstudio writes beside ``config.yml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from collections.abc import Iterator
from pathlib import Path, PosixPath, PurePosixPath

import numpy
import torch
import yaml
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from renderer.object_field import dilate, grid_cell_centres, occupancy_lookup
from renderer.train_object import AssetError

ALLOWED_YAML_MODULES = ("nerfstudio.", "pathlib.", "torch.optim.", "renderer.nerfstudio_method.", "renderer.object_field.")


YAML_CALLABLES = (Path, PosixPath, PurePosixPath)
"""What ``!!python/object/apply`` may call (besides looking an Enum member up by value)."""


class _RestrictedLoader(yaml.UnsafeLoader):
    """A YAML loader for nerfstudio configs that refuses objects from modules outside
    ``ALLOWED_YAML_MODULES`` and never calls what the file names, except the paths and enums
    nerfstudio writes (``!!python/object/apply`` would otherwise call any function of those
    modules with arguments from the file)."""

    def make_python_instance(self, suffix, node, args=None, kwds=None, newobj=False):  # noqa: D102
        cls = self.find_python_name(suffix, node.start_mark)
        if newobj and isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls.__new__(cls)  # !!python/object: the fields come as state, __init__ is not run
        if cls in YAML_CALLABLES or isinstance(cls, type) and issubclass(cls, enum.Enum):
            return super().make_python_instance(suffix, node, args, kwds, newobj)
        raise yaml.constructor.ConstructorError(None, None, f"refusing to call {suffix!r} from a config",
                                                node.start_mark)

    def find_python_name(self, name, mark):  # noqa: D102 (yaml's API)
        if not name.startswith(ALLOWED_YAML_MODULES):
            raise yaml.constructor.ConstructorError(None, None, f"refusing to build {name!r} from a config", mark)
        return super().find_python_name(name, mark)

    def find_python_module(self, name, mark):  # noqa: D102 (nerfstudio configs name no modules)
        raise yaml.constructor.ConstructorError(None, None, f"refusing to import {name!r} from a config", mark)


class _NoLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS while building a model for rendering (offline)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs) -> Tensor:
        raise RuntimeError("LPIPS is not available in nerfsim (offline); it is not needed for rendering")


@contextlib.contextmanager
def offline_lpips() -> Iterator[None]:
    """Build nerfstudio models without downloading LPIPS weights."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = _NoLPIPS
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


def read_trainer_config(config_path: Path):
    """nerfstudio's ``TrainerConfig`` from ``config.yml`` (restricted loader)."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise AssetError(f"{config_path}: nerfstudio config not found")
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.base_model import Model, ModelConfig

    try:
        config = yaml.load(config_path.read_text(), Loader=_RestrictedLoader)
    except yaml.YAMLError as error:
        raise AssetError(f"{config_path}: not a readable nerfstudio config ({error})") from error
    model = getattr(getattr(config, "pipeline", None), "model", None)
    target = getattr(model, "_target", None)
    if not isinstance(config, TrainerConfig) or not isinstance(model, ModelConfig):
        raise AssetError(f"{config_path}: not a nerfstudio trainer config with a pipeline model")
    if not (isinstance(target, type) and issubclass(target, Model)):
        # Model setup calls _target with the config: it must be a model class, not any callable.
        raise AssetError(f"{config_path}: pipeline.model._target {target!r} is not a nerfstudio model class")
    for where, found in _targets(config, "config"):
        if not isinstance(found, type):  # a nested config's setup() calls it too
            raise AssetError(f"{config_path}: {where}._target {found!r} is not a class")
    return config


def _targets(value, where: str, depth: int = 0) -> Iterator[tuple[str, object]]:
    """The ``_target`` of every config dataclass nested in ``value`` (through dicts and lists
    too), with where it is."""
    if depth > 16:
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = vars(value).items()
    elif isinstance(value, dict):
        items = ((str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return
    for name, item in items:
        if name == "_target":
            yield where, item
        else:
            yield from _targets(item, f"{where}.{name}", depth + 1)


def latest_checkpoint(config_path: Path) -> Path:
    """The newest ``step-*.ckpt`` under ``nerfstudio_models/`` beside ``config.yml``."""
    folder = Path(config_path).parent / "nerfstudio_models"
    checkpoints = sorted(folder.glob("step-*.ckpt"))
    if not checkpoints:
        raise AssetError(f"{folder}: no step-*.ckpt checkpoint beside {Path(config_path).name}")
    return checkpoints[-1]


# ns-train's scheduler states hold numpy scalars: rebuilding those from a dtype and raw bytes
# runs no code, so they are allowed beside what weights_only accepts by itself.
NUMPY_SCALAR_GLOBALS = [
    numpy.core.multiarray.scalar,
    numpy.dtype,
    *(getattr(numpy.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")),
]


def read_model_state(checkpoint: Path, trust_checkpoint: bool = False) -> dict[str, Tensor]:
    """The model's tensors from a nerfstudio checkpoint (``_model.`` keys of the pipeline)."""
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            loaded = torch.load(checkpoint, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as error:  # pickle, zip and torch errors all mean the same here
        hint = "" if trust_checkpoint else " (if it holds non-tensor objects and you trust it, pass trust_checkpoint)"
        raise AssetError(f"{checkpoint}: corrupt or unreadable checkpoint{hint}: {error}") from error
    if not isinstance(loaded, dict) or "pipeline" not in loaded:
        raise AssetError(f"{checkpoint}: not a nerfstudio checkpoint (no 'pipeline' state)")
    state = {k.removeprefix("module."): v for k, v in loaded["pipeline"].items()}
    model_state = {k[len("_model."):]: v for k, v in state.items() if k.startswith("_model.")}
    if not model_state:
        raise AssetError(f"{checkpoint}: the checkpoint holds no model weights")
    return model_state


def build_model(trainer_config, model_state: dict[str, Tensor]):
    """Instantiate the nerfstudio model of ``trainer_config`` and load ``model_state`` into it."""
    from nerfstudio.data.scene_box import SceneBox

    aabb = next((v for k, v in model_state.items() if k.endswith("aabb") and v.shape == (2, 3)), None)
    scale = trainer_config.pipeline.datamanager.dataparser.__dict__.get("scene_scale", 1.0)
    scene_box = SceneBox(aabb=aabb.float() if aabb is not None else torch.tensor([[-1.0] * 3, [1.0] * 3]) * scale)
    embeddings = next(
        (v.shape[0] for k, v in model_state.items() if "embedding_appearance" in k and k.endswith("weight")), 1
    )
    with offline_lpips():
        model = trainer_config.pipeline.model.setup(scene_box=scene_box, num_train_data=embeddings, metadata={})
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    missing = [k for k in missing if "lpips" not in k]
    if missing:
        raise AssetError(f"checkpoint does not match its config: missing weights {missing[:5]}")
    return model.eval()


class NerfstudioField(nn.Module):
    """A nerfstudio model queried as a nerfsim radiance field in the object frame (metres).

    Works for models whose ``field`` has nerfstudio's ``get_density`` / ``get_outputs`` pair
    (nerfacto and its relatives) and for nerfsim's own ``nerfsim-object`` method.
    """

    aabb: Float[Tensor, "2 3"]
    occupancy: Bool[Tensor, "R R R"]

    def __init__(
        self,
        model,
        to_model: Float[Tensor, "3 4"],
        scale: float,
        aabb: Float[Tensor, "2 3"],
        occupancy_resolution: int = 64,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("to_model", to_model.float())
        self.scale = float(scale)
        self.register_buffer("aabb", aabb.float())
        self.register_buffer("occupancy", torch.ones((occupancy_resolution,) * 3, dtype=torch.bool))
        self._fill_occupancy()

    @property
    def appearance_embeddings(self) -> int:
        """How many training images have their own appearance embedding (appearance ids
        0..n-1); 0 for models without any, which render one appearance whatever the id."""
        field = self.model.field
        embedding = getattr(field, "embedding_appearance", None)
        return embedding.in_dim if embedding is not None and hasattr(field, "get_density") else 0

    def model_points(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Object-frame metres -> the model's coordinates: scale * (R p + t)."""
        return self.scale * (positions @ self.to_model[:, :3].T + self.to_model[:, 3])

    def forward(
        self,
        positions: Float[Tensor, "N 3"],
        directions: Float[Tensor, "N 3"],
        appearance: Int[Tensor, "N"] | None = None,
    ) -> tuple[Float[Tensor, "N"], Float[Tensor, "N 3"]]:
        """Density per metre and RGB at object-frame points seen along ``directions``, with
        training image ``appearance``'s appearance embedding (-1 or None: the average)."""
        field = self.model.field
        points = self.model_points(positions)
        if not hasattr(field, "get_density"):
            density, rgb = field(points, directions)
            return density * self.scale, rgb
        model_dirs = directions @ self.to_model[:, :3].T
        model_dirs = model_dirs / model_dirs.norm(dim=-1, keepdim=True)
        chosen = appearance is not None and getattr(field, "embedding_appearance", None) is not None
        if not chosen or bool((appearance < 0).all()):
            return self._query(points, model_dirs, None)
        density = points.new_empty(points.shape[0])
        rgb = points.new_empty(points.shape[0], 3)
        for rows, ids in ((appearance < 0, None), (appearance >= 0, appearance)):
            if rows.any():
                density[rows], rgb[rows] = self._query(points[rows], model_dirs[rows], None if ids is None else ids[rows])
        return density, rgb

    def _query(
        self, points: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"], appearance: Int[Tensor, "N"] | None
    ) -> tuple[Float[Tensor, "N"], Float[Tensor, "N 3"]]:
        from nerfstudio.cameras.rays import Frustums, RaySamples
        from nerfstudio.field_components.field_heads import FieldHeadNames

        field = self.model.field
        zeros = points.new_zeros(points.shape[0], 1)
        indices = appearance if appearance is not None else torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        samples = RaySamples(
            frustums=Frustums(origins=points, directions=directions, starts=zeros, ends=zeros, pixel_area=zeros + 1e-6),
            camera_indices=indices[:, None],
        )
        density, embedding = field.get_density(samples)
        # nerfstudio's fields use the per-image embedding only in training mode (the average at
        # evaluation): switch the field, and only the field, to training mode for a chosen image.
        was_training = field.training
        field.training = appearance is not None
        try:
            rgb = field.get_outputs(samples, density_embedding=embedding)[FieldHeadNames.RGB]
        finally:
            field.training = was_training
        return density.reshape(-1) * self.scale, rgb.reshape(-1, 3)

    def occupied(self, positions: Float[Tensor, "N 3"]) -> Bool[Tensor, "N"]:
        return occupancy_lookup(self.occupancy, self.aabb, positions)

    @torch.no_grad()
    def _fill_occupancy(self, opacity_threshold: float = 0.01) -> None:
        res = self.occupancy.shape[0]
        centres = grid_cell_centres(self.aabb, res).reshape(-1, 3)
        step = float(((self.aabb[1] - self.aabb[0]) / res).norm())
        dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand_as(centres)
        density = torch.cat([self(c, d)[0] for c, d in zip(centres.split(65536), dirs.split(65536))])
        occupied = (1 - torch.exp(-density * step)) > opacity_threshold
        self.occupancy.copy_(dilate(occupied.reshape(res, res, res)))


def load_nerfstudio_field(
    config_path: Path,
    aabb: Float[Tensor, "2 3"] | None = None,
    checkpoint: Path | None = None,
    trust_checkpoint: bool = False,
) -> NerfstudioField:
    """Load a trained nerfstudio model as a nerfsim object.

    ``aabb`` (object frame, metres) defaults to the ``nerfsim`` block of the training data's
    ``transforms.json`` when that file is still around, else to the model's scene box mapped
    back into the object frame.
    """
    config_path = Path(config_path)
    trainer_config = read_trainer_config(config_path)
    checkpoint = checkpoint or latest_checkpoint(config_path)
    model = build_model(trainer_config, read_model_state(checkpoint, trust_checkpoint))
    transforms_path = config_path.parent / "dataparser_transforms.json"
    if transforms_path.is_file():
        try:
            saved = json.loads(transforms_path.read_text())
            to_model, scale = torch.tensor(saved["transform"], dtype=torch.float32), float(saved["scale"])
        except (json.JSONDecodeError, KeyError) as error:
            raise AssetError(f"{transforms_path}: unreadable data-parser transform ({error})") from error
    else:
        to_model, scale = torch.eye(3, 4), 1.0
    if aabb is None:
        data = getattr(trainer_config.pipeline.datamanager, "data", None) or getattr(trainer_config, "data", None)
        described = Path(data) / "transforms.json" if data else None
        if described is not None and described.is_file():
            aabb = torch.tensor(json.loads(described.read_text()).get("nerfsim", {}).get("aabb", []) or [[0.0]])
        if aabb is None or aabb.shape != (2, 3):
            box = model.scene_box.aabb
            corners = torch.stack(torch.meshgrid(*[box[:, i] for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
            back = (corners / scale - to_model[:, 3]) @ to_model[:, :3]
            aabb = torch.stack([back.min(0).values, back.max(0).values])
    return NerfstudioField(model, to_model, scale, aabb)
