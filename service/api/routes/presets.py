"""Presets: the named methods a job can choose (``preset`` in a job request)."""

from __future__ import annotations

from fastapi import APIRouter

from optimizer.presets import DEFAULT_PRESET, PRESETS
from optimizer.part_names import PARTS
from service.api.deps import TenantDep
from service.schemas import PresetPublic, PresetsPublic

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", response_model=PresetsPublic)
def list_presets(tenant: TenantDep) -> PresetsPublic:
    """Every preset with its one-line description and the loop settings it sets, the default
    first, and the parts of psi a job can learn (the same for every tenant; a key is needed as
    everywhere under /v1). The other fields of a job and their defaults: the OpenAPI schema."""
    return PresetsPublic(data=[PresetPublic(**preset.to_dict()) for preset in PRESETS.values()], count=len(PRESETS),
                         default=DEFAULT_PRESET, parts=list(PARTS))
