"""The two records every part of nerfsim passes around: what to render, and what came out.

Angles are radians inside the code (degrees only at the API edge); distances are metres.
The camera follows nerfstudio's convention: OpenGL axes (x right, y up, looking down -z).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class SceneParams:
    """Parameters of B images with up to M object slots each.

    Every float field is differentiable: the renderer's outputs carry gradients back to it.
    An object is seen from (azimuth, elevation) in its own frame (y up, azimuth 0 = looking at
    the object's +z face), rolled about the viewing axis, ``distance`` metres from the camera,
    with its centre shifted in the image plane by ``offset`` (fractions of half the image's
    longer side, renderer.camera: on a square image ``offset = (1, 0)`` puts the centre on the
    right edge).
    """

    object_ids: Int[Tensor, "B M"]
    """Index into the scene's object list (the class id is the object's class)."""
    present: Bool[Tensor, "B M"]
    """False for empty slots (images with fewer than M objects)."""
    azimuth: Float[Tensor, "B M"]
    elevation: Float[Tensor, "B M"]
    roll: Float[Tensor, "B M"]
    distance: Float[Tensor, "B M"]
    offset: Float[Tensor, "B M 2"]
    exposure: Float[Tensor, "B M"]
    """Exposure in stops: colours are multiplied by 2**exposure."""
    color_gain: Float[Tensor, "B M 3"]
    """Per-channel colour multiplier (white balance)."""
    background_ids: Int[Tensor, "B"]
    """Index into the background image set, or -1 for a plain colour."""
    background_crop: Float[Tensor, "B 3"]
    """Crop of the background image: centre (u, v) in [0, 1] and side as a fraction of the
    shorter image side, in (0, 1]."""
    background_color: Float[Tensor, "B 3"]
    """Used where ``background_ids == -1``."""
    appearance_ids: Int[Tensor, "B M"] | None = None
    """For objects whose model has per-image appearance embeddings (nerfstudio's nerfacto):
    which training image's appearance to render, -1 for the average. None: -1 everywhere.
    Discrete, so not differentiable; objects without embeddings ignore it."""
    pose_ids: Int[Tensor, "B M"] | None = None
    """Resting pose of each slot's object on its support plane: an index into the renderer's
    pose table of that object (renderer.resting), -1 for the canonical pose (the asset's own
    y up). The view (azimuth, elevation) is then taken above the support plane, and the
    renderer casts contact shadows on it. None: no support plane (objects float, no shadows).
    Discrete, so not differentiable."""

    @property
    def batch_size(self) -> int:
        return self.object_ids.shape[0]

    @property
    def num_slots(self) -> int:
        return self.object_ids.shape[1]

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device: torch.device | str) -> "SceneParams":
        return replace(self, **{name: value.to(device) for name, value in self._tensors().items()})

    @staticmethod
    def cat(batches: list["SceneParams"]) -> "SceneParams":
        """Several batches as one (appearance ids kept only if every batch has them)."""
        names = set.intersection(*(set(b._tensors()) for b in batches))
        return SceneParams(**{name: torch.cat([getattr(b, name) for b in batches]) for name in names})

    def index(self, rows: slice | Tensor) -> "SceneParams":
        """The images ``rows`` (a slice or index tensor) of this batch."""
        return replace(self, **{name: value[rows] for name, value in self._tensors().items()})

    @staticmethod
    def single(
        object_ids: list[int],
        azimuth_deg: list[float],
        elevation_deg: list[float],
        distance: list[float],
        *,
        roll_deg: list[float] | None = None,
        offset: list[tuple[float, float]] | None = None,
        background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> "SceneParams":
        """One image (B = 1) from plain lists, in degrees: handy for tests and examples."""
        m = len(object_ids)

        def row(values: list[float]) -> Tensor:
            return torch.tensor([values], dtype=torch.float32)

        return SceneParams(
            object_ids=torch.tensor([object_ids], dtype=torch.long),
            present=torch.ones(1, m, dtype=torch.bool),
            azimuth=torch.deg2rad(row(azimuth_deg)),
            elevation=torch.deg2rad(row(elevation_deg)),
            roll=torch.deg2rad(row(roll_deg or [0.0] * m)),
            distance=row(distance),
            offset=torch.tensor([offset or [(0.0, 0.0)] * m], dtype=torch.float32),
            exposure=torch.zeros(1, m),
            color_gain=torch.ones(1, m, 3),
            background_ids=torch.full((1,), -1, dtype=torch.long),
            background_crop=torch.tensor([[0.5, 0.5, 1.0]]),
            background_color=torch.tensor([background_color], dtype=torch.float32),
        )


@dataclass
class RenderBatch:
    """What the renderer produces for a :class:`SceneParams` batch.

    ``rgb``, ``alpha``, ``masks`` and ``depth`` are differentiable; ``boxes``, ``visible`` and
    ``keep`` are derived by thresholding and are not.
    """

    rgb: Float[Tensor, "B 3 H W"]
    alpha: Float[Tensor, "B 1 H W"]
    masks: Float[Tensor, "B M H W"]
    """Soft per-instance masks: each slot's share of the pixel's opacity (occlusion applied)."""
    depth: Float[Tensor, "B 1 H W"]
    """Expected distance along the camera ray (metres, not z), 0 where nothing was hit."""
    boxes: Float[Tensor, "B M 4"]
    """Tight xyxy pixel boxes of the visible part of each instance mask (mask > 0.5)."""
    classes: Int[Tensor, "B M"]
    visible: Float[Tensor, "B M"]
    """Visible fraction: occluded mask area over the object's own (unoccluded) mask area."""
    keep: Bool[Tensor, "B M"]
    """Slots that are labelled: present, with a non-empty box and visible >= the threshold."""
