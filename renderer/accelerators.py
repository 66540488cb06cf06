"""CUDA-only code paths: used where they can run (a CUDA device and their package importable),
otherwise the pure-torch path, with one message saying which and why.

A setting that selects such a path takes ``"auto"`` (the CUDA path where it can run, else the
fallback, logged once), ``"cuda"`` (that path or an :class:`AcceleratorError` naming the
setting and what is missing) or ``"torch"`` (always the fallback).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["auto", "cuda", "torch"]
LOGGER = logging.getLogger(__name__)


class AcceleratorError(RuntimeError):
    """A CUDA-only path was asked for where it cannot run."""


@dataclass(frozen=True)
class CudaPath:
    """One CUDA-only implementation and its pure-torch fallback."""

    name: str
    """What it is, for messages."""
    module: str
    """The Python package it needs."""
    setting: str
    """The setting that selects it, for messages."""
    fallback: str
    """What runs instead, for messages."""


TCNN_HASH_GRID = CudaPath("tiny-cuda-nn hash grid", "tinycudann", "ObjectFieldConfig.hash_backend",
                          "nerfstudio's pure-torch hash grid (same model, much slower)")
_warned: set[str] = set()


def unavailable_reason(path: CudaPath) -> str | None:
    """Why ``path`` cannot run on this machine (no CUDA device, or its package not importable),
    or None when it can."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        importlib.import_module(path.module)
    except ImportError as error:  # a missing package, or one built for another CUDA or torch
        return f"{path.module} is not importable ({error})"
    return None


def use_cuda_path(path: CudaPath, backend: Backend) -> bool:
    """Whether to run ``path`` (else its fallback) for a setting of ``backend``."""
    if backend not in ("auto", "cuda", "torch"):
        raise AcceleratorError(f"{path.setting}: unknown value {backend!r}; use 'auto', 'cuda' or 'torch'")
    if backend == "torch":
        return False
    reason = unavailable_reason(path)
    if reason is None:
        return True
    if backend == "cuda":
        raise AcceleratorError(f"{path.setting}='cuda' asks for the {path.name}, which cannot run here: {reason}; "
                               f"use 'auto' (falls back to {path.fallback}) or 'torch'")
    if path.name not in _warned:
        _warned.add(path.name)
        LOGGER.warning("%s: %s, so %s runs instead of the %s", path.setting, reason, path.fallback, path.name)
    return False
