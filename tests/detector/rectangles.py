"""Tiny generated detection data: coloured rectangles on noise (no assets needed)."""

import torch

RECTANGLE_COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]])
"""Class 0 is red, class 1 blue."""


def rectangle_images(count: int, size: int, generator: torch.Generator, max_objects: int = 2):
    """``count`` noise images with 1..max_objects filled rectangles each.

    Returns images [count 3 size size], boxes [count max_objects 4] (xyxy px), classes and keep.
    Rectangles do not overlap: each one gets its own horizontal band of the image.
    """
    images = torch.rand(count, 3, size, size, generator=generator) * 0.5 + 0.25
    boxes = torch.zeros(count, max_objects, 4)
    classes = torch.randint(0, len(RECTANGLE_COLOURS), (count, max_objects), generator=generator)
    present = torch.randint(1, max_objects + 1, (count,), generator=generator)
    keep = torch.arange(max_objects)[None, :] < present[:, None]
    band = size // max_objects
    for i in range(count):
        for slot in range(int(present[i])):
            width, height = (torch.randint(size // 5, size // 2, (2,), generator=generator)).tolist()
            height = min(height, band - 2)
            x0 = int(torch.randint(0, size - width, (1,), generator=generator))
            y0 = slot * band + int(torch.randint(0, band - height, (1,), generator=generator))
            images[i, :, y0 : y0 + height, x0 : x0 + width] = RECTANGLE_COLOURS[classes[i, slot]][:, None, None]
            boxes[i, slot] = torch.tensor([x0, y0, x0 + width, y0 + height], dtype=torch.float32)
    return images, boxes, classes, keep
