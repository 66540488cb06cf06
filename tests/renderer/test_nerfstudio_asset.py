"""nerfstudio checkpoints as scene objects, and nerfsim's model as a nerfstudio method."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from nerfstudio.configs.method_configs import all_methods
from nerfstudio.data.scene_box import SceneBox

from renderer.object_field import ObjectFieldConfig
from renderer.nerfstudio_asset import load_nerfstudio_field, offline_lpips
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_types import SceneParams
from renderer.train_object import AssetError


def save_like_ns_train(tmp_path: Path, method: str = "nerfacto") -> Path:
    """A model directory exactly as ``ns-train`` leaves it: config.yml, dataparser transform,
    nerfstudio_models/step-*.ckpt with the pipeline, optimizer and scaler states."""
    config = all_methods[method]
    config.output_dir = tmp_path / "outputs"
    config.pipeline.datamanager.data = tmp_path / "gone"  # the data folder no longer exists
    # Untrained models that are not empty:
    if method == "nerfacto":
        config.pipeline.model.average_init_density = 300.0
    else:
        config.pipeline.model.object_field = ObjectFieldConfig(density_bias=5.0)
    config.set_timestamp()
    config.save_config()
    torch.manual_seed(0)
    with offline_lpips():
        model = config.pipeline.model.setup(
            scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=3, metadata={}
        )
    base = config.get_base_dir()
    (base / "dataparser_transforms.json").write_text(
        json.dumps({"transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "scale": 4.0})
    )
    (base / "nerfstudio_models").mkdir()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save(
        {
            "step": 7,
            "pipeline": {f"_model.{k}": v for k, v in model.state_dict().items()},
            "optimizers": {"fields": optimizer.state_dict()},
            "schedulers": {},
            "scalers": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        },
        base / "nerfstudio_models" / "step-000000007.ckpt",
    )
    return base / "config.yml"


@pytest.mark.parametrize("method", ["nerfacto", "nerfsim-object"])
def test_checkpoint_renders_offline_without_its_data(tmp_path: Path, method: str) -> None:
    config_path = save_like_ns_train(tmp_path, method)
    aabb = torch.tensor([[-0.1, -0.1, -0.1], [0.1, 0.1, 0.1]])
    field = load_nerfstudio_field(config_path, aabb=aabb)
    assert field.scale == 4.0
    assert torch.equal(field.aabb, aabb)
    assert field.appearance_embeddings == (3 if method == "nerfacto" else 0)  # one per training image
    renderer = SceneRenderer(SceneRendererConfig(samples_per_ray=16), [field])
    params = SceneParams.single([0], [30.0], [10.0], [0.5])
    params.azimuth.requires_grad_(True)
    out = renderer.render(params, 8)
    assert out.rgb.shape == (1, 3, 8, 8) and torch.isfinite(out.rgb).all()
    assert out.alpha.max() > 0.1
    out.rgb.sum().backward()
    assert params.azimuth.grad is not None and torch.isfinite(params.azimuth.grad).all()


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    config_path = save_like_ns_train(tmp_path)
    checkpoint = next((config_path.parent / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(AssetError, match=r"step-000000007.ckpt: corrupt or unreadable checkpoint"):
        load_nerfstudio_field(config_path)
    checkpoint.unlink()
    with pytest.raises(AssetError, match="no step-.*ckpt checkpoint"):
        load_nerfstudio_field(config_path)
    with pytest.raises(AssetError, match="nerfstudio config not found"):
        load_nerfstudio_field(tmp_path / "nope" / "config.yml")


def test_config_naming_foreign_code_is_refused(tmp_path: Path) -> None:
    config_path = save_like_ns_train(tmp_path)
    config_path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(AssetError, match="refusing to build 'os.system'"):
        load_nerfstudio_field(config_path)


def test_nerfsim_object_is_a_registered_nerfstudio_method() -> None:
    config = all_methods["nerfsim-object"]
    assert config.pipeline.model._target.__name__ == "NerfsimObjectModel"
    assert config.pipeline.datamanager.dataparser.auto_scale_poses is False


@pytest.mark.slow
def test_ns_train_trains_nerfsim_object_and_its_checkpoint_loads(tmp_path: Path, box_views: Path) -> None:
    """The registered method through nerfstudio's own trainer (CPU), then its real checkpoint
    as a scene object, with and without the training data folder."""
    data = tmp_path / "views"
    shutil.copytree(box_views, data)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ns-train"), "nerfsim-object", "--data", str(data),
         "--output-dir", str(tmp_path / "outputs"), "--max-num-iterations", "3", "--steps-per-save", "3",
         "--machine.device-type", "cpu", "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
         "--pipeline.datamanager.train-num-rays-per-batch", "256"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (config_path,) = (tmp_path / "outputs").glob("*/nerfsim-object/*/config.yml")
    with_data = load_nerfstudio_field(config_path)
    described = json.loads((data / "transforms.json").read_text())["nerfsim"]["aabb"]
    assert torch.allclose(with_data.aabb, torch.tensor(described))
    shutil.rmtree(data)
    field = load_nerfstudio_field(config_path, aabb=with_data.aabb)
    out = SceneRenderer(SceneRendererConfig(samples_per_ray=16), [field]).render(
        SceneParams.single([0], [10.0], [20.0], [0.4]), 8
    )
    assert torch.isfinite(out.rgb).all()


def test_appearance_embedding_is_chosen_per_object(tmp_path: Path) -> None:
    field = load_nerfstudio_field(save_like_ns_train(tmp_path), aabb=torch.tensor([[-0.1] * 3, [0.1] * 3]))
    with torch.no_grad():
        field.model.field.embedding_appearance.embedding.weight.normal_(0, 3.0)
    renderer = SceneRenderer(SceneRendererConfig(samples_per_ray=16), [field, field])
    params = SceneParams.single([0, 1], [30.0, 30.0], [10.0, 10.0], [0.8, 0.8], offset=[(-0.6, 0.0), (0.6, 0.0)])

    def render(ids: list[int] | None) -> torch.Tensor:
        chosen = replace(params, appearance_ids=None if ids is None else torch.tensor([ids]))
        with torch.no_grad():
            return renderer.render(chosen, 16).rgb

    average, first, mixed = render(None), render([0, 0]), render([-1, 1])
    assert torch.allclose(render([-1, -1]), average, atol=1e-6)
    assert (first - average).abs().max() > 1e-3
    # Each slot uses its own choice: the left object keeps the average, the right one changes.
    assert torch.allclose(mixed[..., :8], average[..., :8], atol=1e-5)
    assert (mixed[..., 8:] - average[..., 8:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x: !!python/object/apply:nerfstudio.utils.scripts.run_command ['touch {marker}']",
         "refusing to call 'nerfstudio.utils.scripts.run_command'"),
        ("x: !!python/object/new:nerfstudio.utils.scripts.run_command ['touch {marker}']",
         "refusing to call 'nerfstudio.utils.scripts.run_command'"),
        ("x: !!python/module:nerfstudio.utils.scripts", "refusing to import 'nerfstudio.utils.scripts'"),
    ],
)
def test_config_calling_code_of_allowed_modules_is_refused(tmp_path: Path, entry: str, message: str) -> None:
    """Functions of nerfstudio itself run shell commands: a config may name them, never call them."""
    config_path = save_like_ns_train(tmp_path)
    marker = tmp_path / "marker"
    config_path.write_text(config_path.read_text() + entry.format(marker=marker) + "\n")
    with pytest.raises(AssetError, match=message):
        load_nerfstudio_field(config_path)
    assert not marker.exists()


def test_config_whose_model_target_is_not_a_model_is_refused(tmp_path: Path) -> None:
    config_path = save_like_ns_train(tmp_path)
    text = config_path.read_text()
    target = "!!python/name:nerfstudio.models.nerfacto.NerfactoModel"
    assert target in text
    config_path.write_text(text.replace(target, "!!python/name:nerfstudio.utils.scripts.run_command"))
    with pytest.raises(AssetError, match="pipeline.model._target .*run_command.* is not a nerfstudio model class"):
        load_nerfstudio_field(config_path)
    scheduler = "!!python/name:nerfstudio.engine.schedulers.ExponentialDecayScheduler"
    assert scheduler in text
    config_path.write_text(text.replace(scheduler, "!!python/name:nerfstudio.utils.scripts.run_command"))
    with pytest.raises(AssetError, match=r"config\.optimizers.*\._target .*run_command.* is not a class"):
        load_nerfstudio_field(config_path)
