"""CUDA-only paths fall back cleanly: without CUDA, without tiny-cuda-nn, without gsplat; asking for
them where they cannot run fails with a message naming the setting and what is missing."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import renderer.accelerators as accelerators
from optimizer.context import resolve_device
from optimizer.psi import OptimizerError
from renderer.accelerators import TCNN_HASH_GRID, AcceleratorError, CudaPath, unavailable_reason, use_cuda_path
from renderer.object_field import ObjectAssetMeta, ObjectField, ObjectFieldConfig
from renderer.train_object import AssetError, load_object_asset, save_object_asset

GSPLAT = CudaPath("gsplat rasteriser", "gsplat", "splat backend", "the torch rasteriser")
AABB = torch.tensor([[-0.05, -0.05, -0.05], [0.05, 0.05, 0.05]])


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accelerators, "_warned", set())


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda_without(monkeypatch: pytest.MonkeyPatch):
    """CUDA reported present, the named packages not importable (as on a GPU machine without them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def hide(*modules: str) -> None:
        for module in modules:
            monkeypatch.setitem(sys.modules, module, None)  # `import module` then raises ImportError

    return hide


def test_without_cuda_the_hash_grid_falls_back_to_torch_and_says_so(no_cuda, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="renderer.accelerators"):
        field = ObjectField(ObjectFieldConfig(encoding="hash", hash_levels=4), AABB)
        ObjectField(ObjectFieldConfig(encoding="hash", hash_levels=4), AABB)
    assert field.encodings[0].tcnn_encoding is None
    density, rgb = field(torch.zeros(5, 3))
    assert torch.isfinite(density).all() and rgb.shape == (5, 3)
    messages = [r.getMessage() for r in caplog.records if "hash_backend" in r.getMessage()]
    assert len(messages) == 1 and "no CUDA device" in messages[0] and "pure-torch" in messages[0]


def test_asking_for_tiny_cuda_nn_without_cuda_names_the_setting(no_cuda) -> None:
    with pytest.raises(AcceleratorError, match=r"ObjectFieldConfig.hash_backend='cuda'.*no CUDA device.*'auto'"):
        ObjectField(ObjectFieldConfig(encoding="hash", hash_backend="cuda"), AABB)


def test_without_tiny_cuda_nn_the_hash_grid_falls_back_and_cuda_is_refused(cuda_without) -> None:
    cuda_without("tinycudann")
    assert "tinycudann is not importable" in unavailable_reason(TCNN_HASH_GRID)
    assert use_cuda_path(TCNN_HASH_GRID, "auto") is False
    with pytest.raises(AcceleratorError, match="tinycudann is not importable"):
        use_cuda_path(TCNN_HASH_GRID, "cuda")


def test_without_gsplat_its_path_is_not_taken(cuda_without) -> None:
    cuda_without("gsplat")
    assert use_cuda_path(GSPLAT, "auto") is False
    with pytest.raises(AcceleratorError, match=r"splat backend='cuda'.*gsplat is not importable.*torch rasteriser"):
        use_cuda_path(GSPLAT, "cuda")


def test_the_torch_backend_never_asks_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> bool:
        raise AssertionError("asked for CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", fail)
    assert use_cuda_path(TCNN_HASH_GRID, "torch") is False


def test_an_unknown_backend_is_refused_naming_the_setting() -> None:
    with pytest.raises(AcceleratorError, match="ObjectFieldConfig.hash_backend: unknown value 'gpu'"):
        use_cuda_path(TCNN_HASH_GRID, "gpu")


def test_a_job_asking_for_cuda_without_it_is_refused_and_auto_runs_on_the_cpu(no_cuda) -> None:
    with pytest.raises(OptimizerError, match="OptimizeConfig.device: 'cuda' asked for, but torch sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def _hash_asset(folder: Path, backend: str) -> Path:
    """A pure-torch hash-grid asset whose description says ``hash_backend=backend``."""
    config = ObjectFieldConfig(encoding="hash", hash_levels=2, hash_backend="torch")
    field = ObjectField(config, AABB)
    meta = ObjectAssetMeta(name="box", aabb=AABB.tolist(), model={**asdict(config), "hash_backend": backend})
    return save_object_asset(field, meta, folder)


def test_a_torch_trained_hash_asset_loads_without_cuda_whatever_backend_it_asked_for(no_cuda, tmp_path) -> None:
    field, _ = load_object_asset(_hash_asset(tmp_path / "asset", "cuda"))
    assert field.encodings[0].tcnn_encoding is None
    density, _ = field(torch.zeros(3, 3))
    assert torch.isfinite(density).all()


def test_a_tiny_cuda_nn_trained_asset_without_cuda_is_refused_saying_why(no_cuda, tmp_path) -> None:
    folder = _hash_asset(tmp_path / "asset", "auto")
    weights = folder / "field.pt"
    state = torch.load(weights, weights_only=True)
    state = {k.replace("hash_table", "tcnn_encoding.params"): v for k, v in state.items()}  # as tiny-cuda-nn saves it
    torch.save(state, weights)
    with pytest.raises(AssetError, match=r"trained on the tiny-cuda-nn hash grid.*no CUDA device.*hash_backend 'torch'"):
        load_object_asset(folder)
