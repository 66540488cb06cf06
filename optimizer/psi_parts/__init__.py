"""psi's parts, one module each: ``optimizer.psi_parts.<name>`` defines ``PART`` (a
:class:`~optimizer.psi_parts.base.PsiPart`) for every name registered in
optimizer.part_names.REGISTRY, found here by its name. ``offsets`` is the fixed image-plane
placement, drawn like a part but with nothing to learn. :class:`optimizer.psi.Psi` composes them.
"""

from __future__ import annotations

import importlib

from optimizer.part_names import PARTS
from optimizer.psi_parts.base import Component, PsiPart
from optimizer.psi_parts.offsets import OFFSETS

PSI_PARTS: dict[str, PsiPart] = {name: importlib.import_module(f"{__name__}.{name}").PART for name in PARTS}
"""Each registered part, in PARTS order."""

DRAW_ORDER: tuple[str, ...] = ("count", "class_mix", "azimuth", "elevation", "distance", "exposure", "color_gain",
                               "offsets", "background", "appearance", "pose")
"""The order the components draw their noise in, which is what a seed reproduces, so it never
changes. A part not listed draws after these, in PARTS order (and a part should draw nothing
when unused), so a seed keeps giving the scenes it gave before the part existed."""

_BY_NAME: dict[str, Component] = {**PSI_PARTS, OFFSETS.name: OFFSETS}
COMPONENTS: tuple[Component, ...] = tuple(
    _BY_NAME[name] for name in (*DRAW_ORDER, *(name for name in PARTS if name not in DRAW_ORDER))
)
"""Every component, in draw order."""
