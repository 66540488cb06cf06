"""Labelled image batches, and their conversion to the target format of Ultralytics' loss.

Boxes are xyxy pixels of the (square) network input throughout; Ultralytics' loss wants
normalised xywh boxes flattened over the batch, with a ``batch_idx`` column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from ultralytics.utils.ops import xyxy2xywh

UltralyticsTargets = dict[str, Tensor]
"""``batch_idx`` [N], ``cls`` [N 1] and ``bboxes`` [N 4] (normalised xywh), as in the trainer."""


@dataclass
class ImageBatch:
    """B square images with up to M labelled boxes each."""

    images: Float[Tensor, "B 3 S S"]
    """RGB in [0, 1]."""
    boxes: Float[Tensor, "B M 4"]
    """xyxy pixels of the images above."""
    classes: Int[Tensor, "B M"]
    keep: Bool[Tensor, "B M"]
    """False for padding slots."""

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def targets(self) -> UltralyticsTargets:
        return targets_from_boxes(self.boxes, self.classes, self.keep, self.image_size)

    def index(self, rows: slice | Tensor) -> "ImageBatch":
        """The images ``rows`` (a slice or index tensor on the batch's device) of this batch."""
        return ImageBatch(self.images[rows], self.boxes[rows], self.classes[rows], self.keep[rows])

    def to(self, device: torch.device | str) -> "ImageBatch":
        return ImageBatch(*(t.to(device) for t in (self.images, self.boxes, self.classes, self.keep)))


def targets_from_boxes(
    boxes: Float[Tensor, "B M 4"],
    classes: Int[Tensor, "B M"],
    keep: Bool[Tensor, "B M"],
    image_size: int,
) -> UltralyticsTargets:
    """Ultralytics batch targets for the kept boxes of B square ``image_size`` images.

    Boxes are clipped to the image and detached: the loss treats its targets as constants
    (no gradient reaches the boxes). They are in the default dtype whatever the boxes' dtype,
    because Ultralytics' loss packs them into a buffer of the default dtype.
    """
    image_index, slot = keep.nonzero(as_tuple=True)
    kept = boxes.detach()[image_index, slot].clamp(0, image_size).to(torch.get_default_dtype())
    return {
        "batch_idx": image_index.to(kept.dtype),
        "cls": classes[image_index, slot].to(kept.dtype)[:, None],
        "bboxes": xyxy2xywh(kept) / image_size,
    }


def select_targets(targets: UltralyticsTargets, image_indices: Int[Tensor, "K"]) -> UltralyticsTargets:
    """The targets of the images ``image_indices``, renumbered 0..K-1 in that order."""
    image_indices = image_indices.to(targets["batch_idx"].device)
    matches = image_indices[:, None] == targets["batch_idx"].long()[None, :]
    # Sorted by new image index: Ultralytics' loss packs targets assuming batch_idx is sorted.
    new_index, row = matches.nonzero(as_tuple=True)
    return {
        "batch_idx": new_index.to(targets["batch_idx"].dtype),
        "cls": targets["cls"][row],
        "bboxes": targets["bboxes"][row],
    }


def pad_boxes(
    boxes: list[Float[Tensor, "N 4"]], classes: list[Int[Tensor, "N"]]
) -> tuple[Float[Tensor, "B M 4"], Int[Tensor, "B M"], Bool[Tensor, "B M"]]:
    """Stack per-image box lists into padded ``boxes, classes, keep`` tensors."""
    slots = max([len(b) for b in boxes] + [1])
    padded_boxes = torch.zeros(len(boxes), slots, 4)
    padded_classes = torch.zeros(len(boxes), slots, dtype=torch.long)
    keep = torch.zeros(len(boxes), slots, dtype=torch.bool)
    for i, (image_boxes, image_classes) in enumerate(zip(boxes, classes)):
        padded_boxes[i, : len(image_boxes)] = image_boxes
        padded_classes[i, : len(image_boxes)] = image_classes
        keep[i, : len(image_boxes)] = True
    return padded_boxes, padded_classes, keep
