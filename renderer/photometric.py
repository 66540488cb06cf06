"""Camera and compositing effects that make rendered images look like photographs.

A renderer's image is too clean to pass for a photo: exact colours, no noise, perfectly sharp,
hard cut-out edges on an empty background. A detector trained on it learns cues that real photos
never show (Dwibedi et al., Cut, Paste and Learn, 2017, found the patch-level realism at object
boundaries matters most). Each function here adds one of the missing effects to a batch of RGB
images ``B 3 H W`` in [0, 1], drawing its random strengths per image from a ``torch.Generator``
(same generator state, same output), and keeps the shape and range. None moves an object, so
boxes derived from the renderer's masks stay correct.

Differentiable (with respect to the images, and for compositing also the alpha and the
background): white balance, exposure and gamma, sensor noise (additive, reparameterised), motion
and defocus blur, light direction, edge feathering, clutter. Not differentiable: JPEG re-compression.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor

Images = Float[Tensor, "B 3 H W"]

Compositing = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""How a renderer puts its objects over the background: (premultiplied object colour
``B 3 H W``, alpha ``B 1 H W``, background ``B 3 H W``, per-instance soft masks ``B M H W``)
-> image ``B 3 H W``."""


class PhotometricError(ValueError):
    """A photometric setting out of its range (names the field)."""


@dataclass(frozen=True)
class PhotometricConfig:
    """Strengths of the photographic effects; every range is sampled uniformly per image.

    The defaults are those of an ordinary indoor phone or webcam photo: a slight colour cast,
    up to half a stop of exposure error, visible but mild noise, a blurred photo now and then,
    usual JPEG qualities, edges one pixel soft, objects lit a little from one side and a few
    unlabelled things in the background."""

    white_balance: float = 0.05
    """Standard deviation of each channel's log gain (0.05: about 5 % colour cast, what auto
    white balance leaves)."""
    exposure_stops: float = 0.5
    """Exposure error drawn from [-exposure_stops, exposure_stops] stops."""
    gamma: float = 0.15
    """Tone curve ``x ** exp(g)`` with g drawn from [-gamma, gamma]."""
    shot_noise: float = 0.002
    """Largest shot-noise variance per unit intensity (0.002: std 0.03 at mid grey)."""
    read_noise: float = 0.01
    """Largest read-noise standard deviation (intensity-independent)."""
    motion_blur_probability: float = 0.3
    """Share of images with motion blur."""
    motion_blur: float = 0.012
    """Longest motion streak, as a fraction of the image's longer side (fractions, so that a
    64 px render is blurred as much as the same view in a 640 px photo)."""
    defocus_blur_probability: float = 0.3
    """Share of images out of focus."""
    defocus_blur: float = 0.006
    """Largest defocus disk radius, as a fraction of the image's longer side."""
    jpeg_probability: float = 0.8
    """Share of images re-compressed as JPEG (non-differentiable)."""
    jpeg_quality: tuple[int, int] = (40, 95)
    """Range of JPEG qualities."""
    edge_feather: float = 1.0
    """Largest Gaussian sigma (pixels) with which the objects' alpha is feathered at their
    boundary with the background."""
    light_ramp: float = 0.15
    """Largest brightness change at an object's far edges from the light's direction: each
    object's colour is scaled by ``1 + s t``, ``t`` running from -1 to 1 across the object
    along a random direction in the image plane, ``s`` drawn from [0, light_ramp] (0: off)."""
    clutter_shapes: tuple[int, int] = (0, 4)
    """Range of the number of unlabelled textured shapes pasted into each background."""
    clutter_size: tuple[float, float] = (0.05, 0.3)
    """Range of a clutter shape's size, as a fraction of the image's longer side."""
    in_loop: bool = False
    """Also apply the differentiable image effects (colour, exposure, gamma, noise, blur) to the
    closed loop's renders, not only to the final dataset."""

    def __post_init__(self) -> None:
        for name in ("white_balance", "exposure_stops", "gamma", "shot_noise", "read_noise", "motion_blur",
                     "defocus_blur", "edge_feather", "light_ramp"):
            if not getattr(self, name) >= 0:
                raise PhotometricError(f"PhotometricConfig.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("motion_blur_probability", "defocus_blur_probability", "jpeg_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise PhotometricError(f"PhotometricConfig.{name}: must be in [0, 1], got {getattr(self, name)}")
        ranges = {"jpeg_quality": (1, 95), "clutter_shapes": (0, 50), "clutter_size": (1e-3, 1.0)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if len(value) != 2 or not low <= value[0] <= value[1] <= high:
                raise PhotometricError(f"PhotometricConfig.{name}: must be a range (low, high) within [{low}, {high}], "
                                       f"got {value}")


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def _like(values: Tensor, images: Tensor) -> Tensor:
    return values.to(device=images.device, dtype=images.dtype)


def white_balance(images: Images, generator: torch.Generator, strength: float = 0.05) -> Images:
    """A colour cast: each channel times ``exp(N(0, strength))``, drawn per image. Differentiable
    (except where the result clips at 0 or 1)."""
    gains = torch.exp(strength * torch.randn(images.shape[0], 3, generator=generator, dtype=torch.float64))
    return (images * _like(gains, images)[:, :, None, None]).clamp(0, 1)


def exposure_gamma(images: Images, generator: torch.Generator, stops: float = 0.5, gamma: float = 0.15) -> Images:
    """Exposure error (times ``2 ** U(-stops, stops)``) then a tone curve ``x ** exp(U(-gamma,
    gamma))``, drawn per image. Differentiable (except where the exposure clips at 1)."""
    count = images.shape[0]
    scale = _like(torch.exp2(_uniform(count, -stops, stops, generator)), images)[:, None, None, None]
    power = _like(torch.exp(_uniform(count, -gamma, gamma, generator)), images)[:, None, None, None]
    # The floor keeps the power's derivative finite at black.
    return (images * scale).clamp(1e-6, 1) ** power


def sensor_noise(images: Images, generator: torch.Generator, shot: float = 0.002, read: float = 0.01) -> Images:
    """Shot and read noise: ``x + sqrt(a x + b^2) N(0, 1)`` per pixel and channel, with ``a`` drawn
    from [0, shot] and ``b`` from [0, read] per image. Differentiable (reparameterised: the normal
    draws are fixed by the generator)."""
    count = images.shape[0]
    a = _like(_uniform(count, 0, shot, generator), images)[:, None, None, None]
    b = _like(_uniform(count, 0, read, generator), images)[:, None, None, None]
    normal = _like(torch.randn(images.shape, generator=generator, dtype=torch.float32), images)
    std = (a * images.clamp(min=0) + b**2).clamp(min=1e-12).sqrt()
    return (images + std * normal).clamp(0, 1)


def _filter(images: Images, kernels: Float[Tensor, "B K K"]) -> Images:
    """Each image convolved with its own normalised kernel (edges replicated)."""
    batch, channels, height, width = images.shape
    pad = kernels.shape[-1] // 2
    padded = F.pad(images.reshape(1, batch * channels, height, width), (pad,) * 4, mode="replicate")
    weight = _like(kernels / kernels.sum(dim=(1, 2), keepdim=True), images).repeat_interleave(channels, 0)
    return F.conv2d(padded, weight[:, None], groups=batch * channels).reshape(batch, channels, height, width)


def _offsets(radius: int) -> tuple[Tensor, Tensor]:
    axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _chosen(count: int, probability: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(count, generator=generator, dtype=torch.float64) < probability).double()


def motion_blur(images: Images, generator: torch.Generator, length: float = 0.012, probability: float = 1.0) -> Images:
    """Camera shake: a straight streak of random direction and length up to ``length`` times the
    image's longer side, in a ``probability`` share of the images (the others unchanged). A
    linear filter, so differentiable."""
    count = images.shape[0]
    streak = _uniform(count, 0, length * max(images.shape[-2:]), generator) * _chosen(count, probability, generator)
    angle = _uniform(count, 0, math.pi, generator)
    x, y = _offsets(math.ceil(float(streak.max()) / 2) + 1)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    along = x * cos + y * sin
    across = -x * sin + y * cos
    # Anti-aliased segment: one pixel wide, ending softly at +-length / 2.
    kernel = (1 - across.abs()).clamp(min=0) * (streak[:, None, None] / 2 + 0.5 - along.abs()).clamp(0, 1)
    sharp = (x == 0) & (y == 0)  # the images left out keep exactly their pixels
    return _filter(images, torch.where(streak[:, None, None] > 0, kernel, sharp.double()))


def defocus_blur(images: Images, generator: torch.Generator, radius: float = 0.006, probability: float = 1.0) -> Images:
    """Out of focus: a disk of random radius up to ``radius`` times the image's longer side, in a
    ``probability`` share of the images (the others unchanged). Linear, so differentiable."""
    count = images.shape[0]
    disk = _uniform(count, 0, radius * max(images.shape[-2:]), generator) * _chosen(count, probability, generator)
    x, y = _offsets(math.ceil(float(disk.max())) + 1)
    kernel = (disk[:, None, None] + 0.5 - torch.sqrt(x**2 + y**2)).clamp(0, 1)
    return _filter(images, kernel)


def jpeg(
    images: Images, generator: torch.Generator, quality: tuple[int, int] = (40, 95), probability: float = 1.0
) -> Images:
    """JPEG re-compression (blocking, ringing, chroma subsampling) at a quality drawn from
    ``quality``, in a ``probability`` share of the images. Not differentiable: the result is
    detached."""
    count = images.shape[0]
    qualities = torch.randint(quality[0], quality[1] + 1, (count,), generator=generator)
    chosen = _chosen(count, probability, generator)
    out = images.detach().clone()
    for row in range(count):
        if not chosen[row]:
            continue
        pixels = (images[row].detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(qualities[row]))
        decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
        out[row] = _like(torch.from_numpy(decoded).permute(2, 0, 1), images)
    return out


def photograph(
    images: Images, config: PhotometricConfig, generator: torch.Generator, differentiable_only: bool = False
) -> Images:
    """Every image effect of ``config``, roughly in a camera's order: blur (optics, motion),
    exposure and tone curve, noise, colour cast, JPEG (storage; left out with
    ``differentiable_only``, which keeps the result differentiable)."""
    images = motion_blur(images, generator, config.motion_blur, config.motion_blur_probability)
    images = defocus_blur(images, generator, config.defocus_blur, config.defocus_blur_probability)
    images = exposure_gamma(images, generator, config.exposure_stops, config.gamma)
    images = sensor_noise(images, generator, config.shot_noise, config.read_noise)
    images = white_balance(images, generator, config.white_balance)
    if not differentiable_only:
        images = jpeg(images, generator, config.jpeg_quality, config.jpeg_probability)
    return images


def over(rgb: Images, alpha: Float[Tensor, "B 1 H W"], background: Images, masks: Tensor | None = None) -> Images:
    """Plain compositing of premultiplied object colour over the background (``masks`` unused)."""
    return rgb + (1 - alpha) * background


def light_ramp(
    rgb: Images, masks: Float[Tensor, "B M H W"], generator: torch.Generator, strength: float = 0.15
) -> Images:
    """A directional light the object's capture did not have: a NeRF's colours bake the lighting
    of its capture, so every render of an object is lit alike. This approximates a light from one
    side (Lambertian shading of a roughly convex object, to first order) by a linear brightness
    ramp across each object's mask: the object's premultiplied colour times ``1 + s t``, where
    ``t`` is the pixel's position along a random image-plane direction, scaled so that it runs
    from about -1 to 1 across the mask (its mean +- sqrt(3) standard deviations, clamped), and
    ``s`` is drawn from [0, strength] per object. Pixels shared by several objects blend their
    ramps by mask share; background pixels are unchanged. The ramp comes from the detached masks,
    so it is differentiable in ``rgb`` (a constant factor per pixel)."""
    batch, slots, height, width = masks.shape
    if strength == 0 or slots == 0:
        return rgb
    angle = _like(_uniform(batch * slots, 0, 2 * math.pi, generator), rgb).reshape(batch, slots, 1, 1)
    scale = _like(_uniform(batch * slots, 0, strength, generator), rgb).reshape(batch, slots, 1, 1)
    weights = masks.detach().to(rgb.dtype)
    ys = torch.arange(height, dtype=rgb.dtype, device=rgb.device)[:, None] + 0.5
    xs = torch.arange(width, dtype=rgb.dtype, device=rgb.device)[None, :] + 0.5
    along = xs * torch.cos(angle) + ys * torch.sin(angle)  # B M H W
    total = weights.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-9)
    mean = (weights * along).sum(dim=(-2, -1), keepdim=True) / total
    along -= mean
    spread = ((weights * along**2).sum(dim=(-2, -1), keepdim=True) / total).sqrt()
    t = (along / (math.sqrt(3) * spread).clamp(min=1e-6)).clamp_(-1, 1)
    # Each pixel's gain is its objects' ramps weighted by their share of its opacity.
    share = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
    gain = 1 + (share * scale * t).sum(dim=1, keepdim=True)
    return rgb * gain  # clipped at white where the image is clipped


def feather_edges(
    rgb: Images, alpha: Float[Tensor, "B 1 H W"], background: Images, generator: torch.Generator, sigma: float = 1.0
) -> Images:
    """Objects over the background with their alpha feathered where they meet it: the alpha
    becomes ``min(alpha, gaussian(alpha))`` (sigma drawn from [0, sigma] pixels per image), which
    blends the outermost object pixels with the background and leaves the interior (and every
    edge between two objects) sharp; the object's colour there is kept. Differentiable."""
    count = alpha.shape[0]
    sigmas = _uniform(count, 0, sigma, generator)
    x, y = _offsets(math.ceil(3 * float(sigmas.max())) + 1)
    width = sigmas.clamp(min=1e-3)[:, None, None]
    soft = _filter(alpha, torch.exp(-(x**2 + y**2) / (2 * width**2)))
    feathered = torch.minimum(alpha, soft)
    # Premultiplied colour scaled to the new coverage; feathered <= alpha keeps the ratio <= 1.
    return rgb * (feathered / alpha.clamp(min=1e-6)) + (1 - feathered) * background


def paste_clutter(
    background: Images,
    generator: torch.Generator,
    shapes: tuple[int, int] = (0, 4),
    size: tuple[float, float] = (0.05, 0.3),
) -> Images:
    """Unlabelled textured shapes pasted into the backgrounds (so that the detector learns that
    not everything in a photo is an object): superellipses (diamond, ellipse, rounded box) at
    random places, sizes and angles, filled with a shaded colour, stripes, or a patch of the
    same background from elsewhere. Anti-aliased edges. Differentiable in the background."""
    batch, _, height, width = background.shape
    longer = max(height, width)
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float64)[None, :] + 0.5
    out = background.clone()
    for row in range(batch):
        count = int(torch.randint(shapes[0], shapes[1] + 1, (1,), generator=generator))
        for _ in range(count):
            cx, cy, angle, u1, u2, u3 = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
            half_a, half_b = (_uniform(2, *size, generator) * longer / 2).tolist()
            power = [1.0, 2.0, 6.0][int(torch.randint(3, (1,), generator=generator))]
            colours = torch.rand(2, 3, generator=generator, dtype=torch.float64)
            kind = int(torch.randint(3, (1,), generator=generator))
            # Only the pixels near the shape change: its mask is 0 where max(|u|, |v|) (at most its
            # radius) reaches 1 + 0.5 / min(half_a, half_b), so beyond this distance from its centre.
            reach = math.hypot(half_a, half_b) * (1 + 0.5 / min(half_a, half_b))
            y0, y1 = max(0, math.floor(cy * height - reach)), min(height, math.ceil(cy * height + reach) + 1)
            x0, x1 = max(0, math.floor(cx * width - reach)), min(width, math.ceil(cx * width + reach) + 1)
            if y1 <= y0 or x1 <= x0:
                continue
            cos, sin = math.cos(angle * math.pi), math.sin(angle * math.pi)
            dx, dy = xs[:, x0:x1] - cx * width, ys[y0:y1] - cy * height
            u, v = (dx * cos + dy * sin) / half_a, (-dx * sin + dy * cos) / half_b
            radius = (u.abs() ** power + v.abs() ** power) ** (1 / power)
            mask = ((1 - radius) * min(half_a, half_b) + 0.5).clamp(0, 1)
            if kind == 0:  # a shaded surface: brighter towards one side
                texture = colours[0][:, None, None] * (0.6 + 0.4 * ((u + 1) / 2).clamp(0, 1))
            elif kind == 1:  # stripes, printed-packaging-like
                period = 2 + u1 * 8
                texture = torch.where((torch.floor(u * half_a / period) % 2 == 0), colours[0][:, None, None],
                                      colours[1][:, None, None])
            else:  # a patch of this background from elsewhere, mirrored
                shift = (int(u2 * height), int(u3 * width))
                texture = background[row].flip(-1).roll(shift, dims=(-2, -1))[:, y0:y1, x0:x1].double().cpu()
            texture = _like(texture.expand(3, y1 - y0, x1 - x0), background)
            weight = _like(mask, background)
            out[row, :, y0:y1, x0:x1] = weight * texture + (1 - weight) * out[row, :, y0:y1, x0:x1]
    return out


def compositor(config: PhotometricConfig, generator: torch.Generator) -> Compositing:
    """The renderers' compositing step with ``config``'s light direction on the objects, clutter
    behind them and feathered edges (a renderer's ``compositing`` argument)."""

    def composite(rgb: Images, alpha: Float[Tensor, "B 1 H W"], background: Images,
                  masks: Float[Tensor, "B M H W"]) -> Images:
        rgb = light_ramp(rgb, masks, generator, config.light_ramp)
        background = paste_clutter(background, generator, config.clutter_shapes, config.clutter_size)
        return feather_edges(rgb, alpha, background, generator, config.edge_feather)

    return composite
