"""The size the final dataset is rendered at and the final detector trains at: the photos'.

The closed loop searches at ``OptimizeConfig.detector.image_size`` (square renders, the letterboxed frame
the validation photos are compared in); the final dataset and detector use the photos' pixel
scale and aspect, so that objects are as many pixels across as in the photos. A rectangular
render is the centre band of the square one (renderer.camera), so psi learned on squares means
the same object scale and position there.
"""

from __future__ import annotations

import statistics
from collections import Counter
from fractions import Fraction

from detector.datasets import LabelledSet
from optimizer.config import OptimizeConfig

STRIDE = 32
"""The detector's largest stride: its image sizes are multiples of it."""


def photo_aspect(photos: LabelledSet | None) -> Fraction:
    """Width over height most common among ``photos`` (the first seen on a tie); 1 without photos."""
    if photos is None or not len(photos):
        return Fraction(1)
    counts = Counter(Fraction(item.width, item.height) for item in photos.images)
    return counts.most_common(1)[0][0]


def final_image_size(config: OptimizeConfig, photos: LabelledSet | None) -> int:
    """``config.final.image_size``, or the photos' median longer side rounded to a multiple of
    STRIDE (at least STRIDE), or ``config.detector.image_size`` without photos."""
    if config.final.image_size is not None:
        return config.final.image_size
    if photos is None or not len(photos):
        return config.detector.image_size
    longer = statistics.median(max(item.width, item.height) for item in photos.images)
    return max(STRIDE, round(longer / STRIDE) * STRIDE)


def final_image_shape(config: OptimizeConfig, photos: LabelledSet | None) -> tuple[int, int]:
    """``(height, width)`` of the final dataset's images: the photos' aspect
    (:func:`photo_aspect`) with the longer side :func:`final_image_size`."""
    longer = final_image_size(config, photos)
    aspect = photo_aspect(photos)
    if aspect >= 1:
        return max(1, round(longer / aspect)), longer
    return longer, max(1, round(longer * aspect))
