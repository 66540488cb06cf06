"""The ``appearance`` objective for the azimuth bins: match what psi's objects look like to
what the validation objects of their class look like (``alignment_objective="appearance"``).

Not a hypergradient: no detector is involved. Every object is cut out of its image by its box
and resampled to ``CROP_SIZE`` x ``CROP_SIZE`` pixels (``torchvision.ops.roi_align``), its mean
subtracted and scaled to unit length, which leaves its shape and texture and drops its size and
brightness (distance and exposure are other parts of psi). The objective is the squared maximum
mean discrepancy between psi's crops and the validation crops, per class, with a Gaussian
kernel (Meta-Sim matched rendered and real images' distributions the same way, on network
features). With every scene rendered at every bin (``enumerate_bins``) and ``p`` a class's bin
probabilities,

    MMD^2(p) = p^T A p - 2 p . b + const,

``A[j, k]`` the mean kernel between crops of bins j and k from *different* scenes and ``b[k]``
the mean kernel between crops of bin k and the class's validation crops. It is quadratic in
``p``, so its minimiser can be a mixture of bins (the mean per-image alignment, linear in
``p``, always peaks on a single bin: docs/findings.md, finding 22). Measured at the pose
shift (docs/findings.md, finding 26): the per-crop similarity to the validation crops told the target's bins apart at
t = 6.7-8.0 over 48 scenes, where the detector's per-image gradient alignment reached
t = 1.5-3.4 and its box-pooled features t = 0.1-3.1.

The kernel does not change as the detector trains, so :class:`AppearanceStatistics` keeps
every outer iteration's crops with equal weight. Nothing here is differentiable: crops are
taken without gradients, and the returned gradient is the exact derivative of the estimated
MMD^2 with respect to the bin logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torchvision.ops import roi_align

from optimizer.psi import OptimizerError

CROP_SIZE = 16
"""Side of an object's crop in pixels (at the pose shift 8 and 16 told the bins apart alike)."""


def raw_object_crops(
    images: Float[Tensor, "B 3 S S"], boxes: Float[Tensor, "B M 4"], keep: Bool[Tensor, "B M"]
) -> tuple[Float[Tensor, "N 3 R R"], Int[Tensor, "N"], Int[Tensor, "N"]]:
    """Each kept object's box resampled to CROP_SIZE x CROP_SIZE pixels as it is (R =
    CROP_SIZE), with the row and slot of its image it came from. Detached."""
    rows, slots = keep.nonzero(as_tuple=True)
    regions = torch.cat([rows[:, None].to(images.dtype), boxes.detach()[rows, slots].to(images.dtype)], 1)
    with torch.no_grad():
        crops = roi_align(images.detach(), regions, CROP_SIZE, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops, rows, slots


def normalised_crops(crops: Float[Tensor, "N 3 R R"]) -> Float[Tensor, "N D"]:
    """:func:`raw_object_crops` flattened, mean 0 and unit length: shape and texture only."""
    crops = crops - crops.mean((1, 2, 3), keepdim=True)
    return torch.nn.functional.normalize(crops.flatten(1), dim=1)


def object_crops(
    images: Float[Tensor, "B 3 S S"], boxes: Float[Tensor, "B M 4"], keep: Bool[Tensor, "B M"]
) -> tuple[Float[Tensor, "N D"], Int[Tensor, "N"], Int[Tensor, "N"]]:
    """Each kept object's crop (CROP_SIZE^2 x 3 values, mean 0, unit length), with the row and
    slot of its image it came from. Detached."""
    crops, rows, slots = raw_object_crops(images, boxes, keep)
    return normalised_crops(crops), rows, slots


def crop_bandwidth(crops: Float[Tensor, "N D"]) -> float:
    """The kernel's bandwidth: the median distance between two different crops (the validation
    crops, so that it is fixed for a run)."""
    if crops.shape[0] < 2:
        raise OptimizerError("the appearance objective needs at least 2 validation objects to set its kernel's bandwidth")
    distances = torch.cdist(crops, crops)
    return float(distances[~torch.eye(crops.shape[0], dtype=torch.bool, device=crops.device)].median())


def gaussian_kernel(a: Float[Tensor, "N D"], b: Float[Tensor, "M D"], bandwidth: float) -> Float[Tensor, "N M"]:
    return torch.exp(-(torch.cdist(a, b) / bandwidth) ** 2 / 2)


@dataclass
class AppearanceStatistics:
    """Every crop seen so far, with its class, azimuth bin and scene, behind the per-class ``A``
    and ``b`` of the module docstring: pairs of crops from different iterations count too, so a
    class drawn in one scene per iteration still gets its estimate. (A crop is
    ``3 * CROP_SIZE^2`` floats: 12 iterations of 96 objects are 3.5 MB.) Plain fields, so
    ``dataclasses.asdict`` / ``AppearanceStatistics(**state)`` checkpoint it."""

    bandwidth: float
    """Of the Gaussian kernel (:func:`crop_bandwidth`)."""
    crops: Tensor | None = None
    """[N, D] (:func:`object_crops`)."""
    classes: Tensor | None = None
    bins: Tensor | None = None
    scenes: Tensor | None = None
    """Scene of each crop, numbered over all updates: a scene's views of one object at
    different bins are never paired (they would count as psi's other data)."""

    def update(self, crops: Float[Tensor, "N D"], classes: Int[Tensor, "N"], bins: Int[Tensor, "N"],
               scenes: Int[Tensor, "N"]) -> None:
        """Add one batch's crops, their classes, azimuth bins and scenes (numbered within the batch)."""
        if not crops.shape[0] == classes.numel() == bins.numel() == scenes.numel():
            raise OptimizerError(f"AppearanceStatistics.update: crops {tuple(crops.shape)}, classes "
                                 f"{tuple(classes.shape)}, bins {tuple(bins.shape)} and scenes {tuple(scenes.shape)} "
                                 "must describe the same objects")
        offset = int(self.scenes.max()) + 1 if self.scenes is not None and self.scenes.numel() else 0
        new = (crops.detach().float().cpu(), classes.cpu(), bins.cpu(), scenes.cpu().unique(return_inverse=True)[1] + offset)
        if self.crops is None:
            self.crops, self.classes, self.bins, self.scenes = new
        else:
            self.crops, self.classes, self.bins, self.scenes = (
                torch.cat([old, part]) for old, part in zip((self.crops, self.classes, self.bins, self.scenes), new))

    def terms(self, val_crops: Float[Tensor, "V D"], val_classes: Int[Tensor, "V"], shape: tuple[int, int]
              ) -> tuple[Float[Tensor, "C K K"], Float[Tensor, "C K"], Bool[Tensor, "C"]]:
        """Per class: ``A``, ``b``, and whether every bin and pair of bins was measured (and
        the class has validation objects)."""
        if self.crops is None:
            raise OptimizerError("AppearanceStatistics: no batch yet (call update first)")
        class_count, bin_count = shape
        quadratic = torch.zeros(class_count, bin_count, bin_count)
        linear = torch.zeros(class_count, bin_count)
        measured = torch.zeros(class_count, dtype=torch.bool)
        val_crops, val_classes = val_crops.detach().float().cpu(), val_classes.cpu()
        for class_id in self.classes.unique().tolist():
            own = self.classes == class_id
            references = val_crops[val_classes == class_id]
            if references.shape[0] == 0:
                continue  # no validation object of this class: nothing to match
            crops, one_hot = self.crops[own], torch.nn.functional.one_hot(self.bins[own], bin_count).float()
            other_scene = (self.scenes[own][:, None] != self.scenes[own][None, :]).float()
            pairs = one_hot.T @ other_scene @ one_hot
            counts = one_hot.sum(0)
            quadratic[class_id] = one_hot.T @ (gaussian_kernel(crops, crops, self.bandwidth) * other_scene) @ one_hot
            quadratic[class_id] /= pairs.clamp_min(1)
            linear[class_id] = one_hot.T @ gaussian_kernel(crops, references, self.bandwidth).mean(1) / counts.clamp_min(1)
            measured[class_id] = bool((counts > 0).all() and (pairs > 0).all())
        return quadratic, linear, measured

    def gradient(self, logits: Float[Tensor, "C K"], val_crops: Float[Tensor, "V D"], val_classes: Int[Tensor, "V"]
                 ) -> tuple[Float[Tensor, "C K"], dict[str, float]]:
        """The derivative of the estimated MMD^2, summed over the measured classes (see
        :meth:`terms`; the others give no gradient yet), by ``logits`` (row c: class c's bins);
        diagnostics ``appearance_mmd`` (the sum, up to the constant) and
        ``appearance_classes`` (how many classes it covers)."""
        quadratic, linear, measured = self.terms(val_crops, val_classes, tuple(logits.shape))
        if not bool(measured.any()):
            return torch.zeros_like(logits), {"appearance_mmd": 0.0, "appearance_classes": 0}
        leaf = logits.detach().cpu().float().clone().requires_grad_(True)
        probs = leaf.softmax(-1)[measured]
        discrepancy = (torch.einsum("cj,cjk,ck->c", probs, quadratic[measured], probs)
                       - 2 * (probs * linear[measured]).sum(1)).sum()
        (gradient,) = torch.autograd.grad(discrepancy, leaf)
        return gradient.to(logits), {"appearance_mmd": float(discrepancy.detach()),
                                     "appearance_classes": int(measured.sum())}
