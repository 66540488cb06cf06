"""Render labelled scenes of several NeRF objects, differentiably.

The scene is built in the camera frame (see ``renderer.camera``): every object slot has its own
object-to-camera pose, camera rays are carried into each object's frame, each object's field is
marched inside its box, and the samples of all objects along a pixel's ray are merged front to
back, which gives correct occlusion (also for interpenetrating boxes). Per-instance masks are
each slot's share of the compositing weights; a slot rendered alone gives the visible fraction.
Scenes with pose ids put each object in a resting pose (renderer.resting) before its view, so
the view is taken above its support plane, and darken the background with contact shadows
(renderer.shadows) before the objects are composited over it.
Splat objects (``renderer.splat.SplatObject``) are rasterised into the same per-ray samples, so
they occlude and are occluded by NeRF objects exactly.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from renderer.backgrounds import BackgroundSet
from renderer.camera import Size, camera_ray_directions, focal_length, image_shape, object_to_camera
from renderer.labels import boxes_from_masks, in_image_fractions, kept_slots, visible_fractions
from renderer.photometric import Compositing, over
from renderer.raymarch import (
    PackedSamples,
    RadianceField,
    accumulate,
    compositing_weights,
    march_field,
    ray_depth_order,
)
from renderer.resting import PoseTable
from renderer.scene_types import RenderBatch, SceneParams
from renderer.shadows import ContactShadowConfig, contact_shadow_mask
from renderer.splat import SplatObject
from renderer.splat_kernel import load_kernel, render_splat_chunk


@dataclass
class SceneRendererConfig:
    """Configuration of :class:`SceneRenderer`."""

    fov_deg: float = 40.0
    """Field of view across the image's longer side (renderer.camera)."""
    samples_per_ray: int = 96
    """Evenly spaced samples across each object's box along a ray (before empty-space skipping)."""
    min_visible: float = 0.3
    """Objects with a smaller visible fraction are dropped from the labels."""
    chunk_images: int = 8
    """Images rendered together; bounds memory."""
    gradient_checkpointing: bool = False
    """Recompute each chunk in the backward pass instead of keeping its graph: memory stays
    bounded by one chunk when rendering many images with gradients."""
    contact_shadows: ContactShadowConfig = field(default_factory=ContactShadowConfig)
    """Shadows cast on the support plane by objects in resting poses (scenes with pose ids)."""
    compiled_splats: bool = True
    """Render images whose objects are all float32 splats, on CPU and without gradients (a
    dataset), through the compiled compositor of renderer.splat_kernel when it builds; else, and
    with gradients, through the torch rasteriser."""


@dataclass
class _ChunkImages:
    rgb: Tensor
    alpha: Tensor
    masks: Tensor
    alone: Tensor
    depth: Tensor


class SceneRenderer:
    """Renders :class:`SceneParams` batches with one radiance field or splat per object class."""

    def __init__(
        self,
        config: SceneRendererConfig,
        fields: list[RadianceField | SplatObject],
        backgrounds: BackgroundSet | None = None,
        poses: list[PoseTable] | None = None,
    ) -> None:
        """``poses``: each object's resting poses (renderer.resting), needed for scenes with
        ``pose_ids``."""
        if not fields:
            raise ValueError("a scene needs at least one object field")
        self.config = config
        self.fields = fields
        self.backgrounds = backgrounds or BackgroundSet.empty()
        self._directions: dict[tuple[int, int, str], Tensor] = {}
        self.poses = poses
        if poses is not None and len(poses) != len(fields):
            raise ValueError(f"poses: one pose table per object ({len(fields)}), got {len(poses)}")

    def ray_directions(self, size: Size, device: torch.device) -> Float[Tensor, "P 3"]:
        key = (*image_shape(size), str(device))
        if key not in self._directions:
            self._directions[key] = camera_ray_directions(size, self.config.fov_deg, device).reshape(-1, 3)
        return self._directions[key]

    def render(self, params: SceneParams, size: Size, compositing: Compositing = over) -> RenderBatch:
        """Render every image of ``params`` at ``size`` (an int: a square; or ``(height,
        width)``: the centre band of the square of the longer side, renderer.camera);
        ``compositing`` puts the objects over the background (renderer.photometric.compositor
        shades them, adds clutter behind them and feathers their edges)."""
        used = params.object_ids[params.present]
        if used.numel() and not 0 <= int(used.min()) <= int(used.max()) < len(self.fields):
            raise ValueError(
                f"object ids must lie in [0, {len(self.fields)}): the scene has {len(self.fields)} objects, "
                f"got ids {sorted(set(used.tolist()))}"
            )
        if params.pose_ids is not None:
            self._check_poses(params)
        step = self.config.chunk_images
        parts = []
        for start in range(0, params.batch_size, step):
            chunk = params.index(slice(start, start + step))
            if self.config.gradient_checkpointing and torch.is_grad_enabled():
                images = _ChunkImages(
                    *checkpoint(lambda p: self._render_chunk(p, size), chunk, use_reentrant=False)
                )
            else:
                images = _ChunkImages(*self._render_chunk(chunk, size))
            parts.append(images)
        rgb = torch.cat([p.rgb for p in parts])
        masks = torch.cat([p.masks for p in parts])
        alone = torch.cat([p.alone for p in parts])
        background = self.backgrounds.compose(
            params.background_ids, params.background_crop, params.background_color, size
        )
        shadows = self.config.contact_shadows
        if params.pose_ids is not None and shadows.strength > 0:
            mask = contact_shadow_mask(params, self.poses, self.config.fov_deg, size, shadows)
            background = background * (1 - shadows.strength * mask)
        alpha = torch.cat([p.alpha for p in parts])
        boxes = boxes_from_masks(masks)
        visible = visible_fractions(masks, alone) * self._in_image(params, size)
        return RenderBatch(
            rgb=compositing(rgb, alpha, background, masks),
            alpha=alpha,
            masks=masks,
            depth=torch.cat([p.depth for p in parts]),
            boxes=boxes,
            classes=params.object_ids,
            visible=visible,
            keep=kept_slots(params.present, boxes, visible, self.config.min_visible),
        )

    @torch.no_grad()
    def _in_image(self, params: SceneParams, size: Size) -> Tensor:
        """Each slot's share inside the image (renderer.labels.in_image_fractions), from its
        object's aabb corners in its pose."""
        rotation, translation = object_to_camera(
            params.azimuth, params.elevation, params.roll, params.distance, params.offset, self.config.fov_deg
        )
        rotation = self._rested(rotation, params)
        pick = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=rotation.device)
        boxes = torch.stack([f.aabb.detach().to(rotation) for f in self.fields])  # O 2 3
        corners = boxes[:, pick, torch.arange(3, device=rotation.device)]  # O 8 3
        slot_corners = corners[params.object_ids.clamp(0, len(self.fields) - 1)]  # B M 8 3
        camera = torch.einsum("bmij,bmkj->bmki", rotation, slot_corners) + translation[:, :, None]
        return in_image_fractions(camera, focal_length(size, self.config.fov_deg), size)

    def _check_poses(self, params: SceneParams) -> None:
        if self.poses is None:
            raise ValueError("pose_ids: this renderer has no pose tables (SceneRenderer(poses=...))")
        for object_id, table in enumerate(self.poses):
            ids = params.pose_ids[params.present & (params.object_ids == object_id)]
            if ids.numel() and not -1 <= int(ids.min()) <= int(ids.max()) < table.num_poses:
                raise ValueError(f"pose_ids: object {object_id} has poses -1..{table.num_poses - 1}, got {sorted(set(ids.tolist()))}")

    def _rested(self, view: Tensor, params: SceneParams) -> Tensor:
        """Object-to-camera rotations with each slot's resting pose applied before its view
        (the view is then taken in the resting frame, above the support plane). Slots in the
        canonical pose keep the view rotation itself (bit for bit)."""
        if params.pose_ids is None:
            return view
        table = torch.eye(3, device=view.device, dtype=view.dtype).repeat(len(self.fields), 1 + max(t.num_poses for t in self.poses), 1, 1)
        for object_id, poses in enumerate(self.poses):
            table[object_id, 1 : 1 + poses.num_poses] = poses.rotations.to(table)
        # Empty slots may hold any ids: clamped, they index some table entry that goes unused.
        pose = table[params.object_ids.clamp(0, len(self.fields) - 1), params.pose_ids.clamp(-1, table.shape[1] - 2) + 1]
        return torch.where((params.pose_ids >= 0)[..., None, None], view @ pose, view)

    def _splat_kernel(self, params: SceneParams) -> ctypes.CDLL | None:
        """The compiled splat compositor where it applies to these images, else None."""
        if not self.config.compiled_splats or torch.is_grad_enabled() or params.distance.device.type != "cpu":
            return None
        used = [self.fields[i] for i in params.object_ids[params.present].unique().tolist()]
        if params.distance.dtype != torch.float32 or not all(
            isinstance(f, SplatObject) and f.means.dtype == torch.float32 for f in used
        ):
            return None
        return load_kernel()

    def _render_chunk(self, params: SceneParams, size: Size) -> tuple[Tensor, ...]:
        device = params.distance.device
        batch, slots = params.batch_size, params.num_slots
        height, width = image_shape(size)
        pixels = height * width
        directions = self.ray_directions(size, device).to(params.distance.dtype)
        rotation, translation = object_to_camera(
            params.azimuth, params.elevation, params.roll, params.distance, params.offset, self.config.fov_deg
        )
        rotation = self._rested(rotation, params)
        # The camera sits at the origin of the camera frame; in an object's frame it is at
        # -R^T t, and a camera ray direction d becomes R^T d.
        origins = -torch.einsum("bmji,bmj->bmi", rotation, translation)
        gain = params.color_gain * torch.exp2(params.exposure)[..., None]
        kernel = self._splat_kernel(params)
        if kernel is not None:
            return render_splat_chunk(kernel, self.fields, params, rotation, translation, gain, self.config.fov_deg, size)

        packed: list[PackedSamples] = []
        slot_of_sample: list[Tensor] = []
        for object_id, field in enumerate(self.fields):
            chosen = ((params.object_ids == object_id) & params.present).nonzero()
            if chosen.numel() == 0:
                continue
            b, m = chosen[:, 0], chosen[:, 1]
            if isinstance(field, SplatObject):
                # Splats are rasterised per view into the same kind of per-ray samples.
                samples = field.packed_samples(rotation[b, m], translation[b, m], self.config.fov_deg, size)
            else:
                ray_dirs = torch.einsum("nji,pj->npi", rotation[b, m], directions).reshape(-1, 3)
                ray_origins = origins[b, m].repeat_interleave(pixels, dim=0)
                appearance = (
                    None if params.appearance_ids is None else params.appearance_ids[b, m].repeat_interleave(pixels)
                )
                samples = march_field(field, ray_origins, ray_dirs, self.config.samples_per_ray, appearance=appearance)
            which = samples.ray_ids // pixels  # row of `chosen`
            pixel = samples.ray_ids % pixels
            samples.rgb = samples.rgb * gain[b[which], m[which]]
            samples.ray_ids = b[which] * pixels + pixel
            packed.append(samples)
            slot_of_sample.append((b[which] * slots + m[which]) * pixels + pixel)

        num_rays = batch * pixels
        if packed:
            samples = PackedSamples.cat(packed)
            slot_pixel = torch.cat(slot_of_sample)
        else:
            samples = PackedSamples.empty(device)
            slot_pixel = samples.ray_ids
        # Objects rendered alone: 1 - exp(-total optical depth of that slot along the ray).
        alone = 1 - torch.exp(-accumulate(samples.optical_depth, slot_pixel, batch * slots * pixels))

        order = ray_depth_order(samples)
        samples, slot_pixel = samples.take(order), slot_pixel[order]
        weights = compositing_weights(samples)
        rgb = accumulate(weights[:, None] * samples.rgb, samples.ray_ids, num_rays)
        alpha = accumulate(weights, samples.ray_ids, num_rays)
        depth_sum = accumulate(weights * samples.t, samples.ray_ids, num_rays)
        masks = accumulate(weights, slot_pixel, batch * slots * pixels)
        depth = torch.where(alpha > 1e-4, depth_sum / alpha.clamp(min=1e-4), torch.zeros_like(depth_sum))

        def image(x: Tensor, channels: int) -> Tensor:
            return x.reshape(batch, height, width, channels).permute(0, 3, 1, 2)

        return (
            image(rgb, 3),
            image(alpha[:, None], 1),
            masks.reshape(batch, slots, height, width),
            alone.reshape(batch, slots, height, width),
            image(depth[:, None], 1),
        )
