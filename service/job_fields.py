"""Helpers of the job and asset fields: reading stored records whose settings were retired,
and the devices a deployment's workers offer. The job's fields themselves are the SDK's
JobSpec (nerfsim_client.spec)."""

from __future__ import annotations

from functools import cache
from typing import get_args

from pydantic import BaseModel


def drop_retired(data, model: type[BaseModel]):
    """A stored ``model`` (parsed JSON) without the fields ``model`` no longer has, nested
    models included: records stored before the allowlists stay readable, and a queued job
    runs without the settings it may no longer name (server paths, trainer arguments)."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        nested = next((t for t in (field.annotation, *get_args(field.annotation))
                       if isinstance(t, type) and issubclass(t, BaseModel)), None)
        kept[name] = drop_retired(value, nested) if nested else value
    return kept


def worker_devices(settings) -> tuple[str, ...]:
    """The devices jobs may ask for besides 'auto' (ServiceSettings.worker_devices)."""
    if settings.worker_devices is not None:
        return tuple(settings.worker_devices)
    return _local_devices()


@cache
def _local_devices() -> tuple[str, ...]:
    import torch

    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
