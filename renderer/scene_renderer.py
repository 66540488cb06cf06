"""Render labelled scenes of several NeRF objects, differentiably.

The scene is built in the camera frame (see ``renderer.camera``): every object slot has its own
object-to-camera pose, camera rays are carried into each object's frame, each object's field is
marched inside its box, and the samples of all objects along a pixel's ray are merged front to
back, which gives correct occlusion (also for interpenetrating boxes). Per-instance masks are
each slot's share of the compositing weights; a slot rendered alone gives the visible fraction.
Splat objects (``renderer.splat.SplatObject``) are rasterised into the same per-ray samples, so
they occlude and are occluded by NeRF objects exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from renderer.backgrounds import BackgroundSet
from renderer.camera import camera_ray_directions, object_to_camera
from renderer.labels import boxes_from_masks, kept_slots, visible_fractions
from renderer.photometric import Compositing, over
from renderer.raymarch import (
    PackedSamples,
    RadianceField,
    accumulate,
    compositing_weights,
    march_field,
    ray_depth_order,
)
from renderer.scene_types import RenderBatch, SceneParams
from renderer.splat import SplatObject


@dataclass
class SceneRendererConfig:
    """Configuration of :class:`SceneRenderer`."""

    fov_deg: float = 40.0
    """Field of view of the square camera."""
    samples_per_ray: int = 96
    """Evenly spaced samples across each object's box along a ray (before empty-space skipping)."""
    min_visible: float = 0.3
    """Objects with a smaller visible fraction are dropped from the labels."""
    chunk_images: int = 8
    """Images rendered together; bounds memory."""
    gradient_checkpointing: bool = False
    """Recompute each chunk in the backward pass instead of keeping its graph: memory stays
    bounded by one chunk when rendering many images with gradients."""


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
    ) -> None:
        if not fields:
            raise ValueError("a scene needs at least one object field")
        self.config = config
        self.fields = fields
        self.backgrounds = backgrounds or BackgroundSet.empty()
        self._directions: dict[tuple[int, str], Tensor] = {}

    def ray_directions(self, size: int, device: torch.device) -> Float[Tensor, "P 3"]:
        key = (size, str(device))
        if key not in self._directions:
            self._directions[key] = camera_ray_directions(size, self.config.fov_deg, device).reshape(-1, 3)
        return self._directions[key]

    def render(self, params: SceneParams, size: int, compositing: Compositing = over) -> RenderBatch:
        """Render every image of ``params`` at ``size`` x ``size`` pixels; ``compositing`` puts
        the objects over the background (renderer.photometric.compositor adds clutter behind
        them and feathers their edges)."""
        used = params.object_ids[params.present]
        if used.numel() and not 0 <= int(used.min()) <= int(used.max()) < len(self.fields):
            raise ValueError(
                f"object ids must lie in [0, {len(self.fields)}): the scene has {len(self.fields)} objects, "
                f"got ids {sorted(set(used.tolist()))}"
            )
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
        alpha = torch.cat([p.alpha for p in parts])
        boxes = boxes_from_masks(masks)
        visible = visible_fractions(masks, alone)
        return RenderBatch(
            rgb=compositing(rgb, alpha, background),
            alpha=alpha,
            masks=masks,
            depth=torch.cat([p.depth for p in parts]),
            boxes=boxes,
            classes=params.object_ids,
            visible=visible,
            keep=kept_slots(params.present, boxes, visible, self.config.min_visible),
        )

    def _render_chunk(self, params: SceneParams, size: int) -> tuple[Tensor, ...]:
        device = params.distance.device
        batch, slots = params.batch_size, params.num_slots
        pixels = size * size
        directions = self.ray_directions(size, device).to(params.distance.dtype)
        rotation, translation = object_to_camera(
            params.azimuth, params.elevation, params.roll, params.distance, params.offset, self.config.fov_deg
        )
        # The camera sits at the origin of the camera frame; in an object's frame it is at
        # -R^T t, and a camera ray direction d becomes R^T d.
        origins = -torch.einsum("bmji,bmj->bmi", rotation, translation)
        gain = params.color_gain * torch.exp2(params.exposure)[..., None]

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
            return x.reshape(batch, size, size, channels).permute(0, 3, 1, 2)

        return (
            image(rgb, 3),
            image(alpha[:, None], 1),
            masks.reshape(batch, slots, size, size),
            alone.reshape(batch, slots, size, size),
            image(depth[:, None], 1),
        )
