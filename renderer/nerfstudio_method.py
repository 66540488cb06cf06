"""nerfsim's object model as a nerfstudio method, so ``ns-train nerfsim-object`` trains it on a
GPU with nerfstudio's data pipeline (registered through the ``nerfstudio.method_configs`` entry
point in pyproject.toml).

The posed image sets that ``nerfsim asset from-mesh`` writes are metric and already centred on
the object, so the data parser keeps poses as they are (no re-orientation or re-scaling) and the
scene box is the object's neighbourhood (``scene_scale`` metres each way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from torch import Tensor
from torch.nn import Parameter

from renderer.object_field import ObjectField, ObjectFieldConfig
from renderer.raymarch import accumulate, compositing_weights, march_field


@dataclass
class NerfsimObjectModelConfig(ModelConfig):
    """Configuration of :class:`NerfsimObjectModel`."""

    _target: Type = field(default_factory=lambda: NerfsimObjectModel)
    object_field: ObjectFieldConfig = field(default_factory=ObjectFieldConfig)
    """The field (K-Planes on CPU; ``encoding="hash"`` uses tiny-cuda-nn when importable)."""
    samples_per_ray: int = 128
    """Stratified samples across the scene box per ray, before empty-space skipping."""
    occupancy_every: int = 250
    """Refresh the empty-space grid from the learned density every this many steps."""
    occupancy_warmup: int = 500
    """Steps before the first refresh (the grid starts fully occupied)."""


class NerfsimObjectModel(Model):
    """A nerfstudio model around :class:`ObjectField`, rendered with nerfsim's packed marcher."""

    config: NerfsimObjectModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.field = ObjectField(self.config.object_field, self.scene_box.aabb)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"fields": list(self.field.parameters())}

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        everywhere = torch.ones_like(self.field.occupancy)

        def refresh(step: int) -> None:
            if step >= self.config.occupancy_warmup:
                self.field.refresh_occupancy(everywhere.to(self.field.occupancy.device))

        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=self.config.occupancy_every,
                func=refresh,
            )
        ]

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        shape = ray_bundle.origins.shape[:-1]
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = ray_bundle.directions.reshape(-1, 3)
        jitter = torch.Generator(device=origins.device) if self.training else None
        if jitter is not None:
            jitter.seed()
        samples = march_field(self.field, origins, directions, self.config.samples_per_ray, jitter)
        weights = compositing_weights(samples)
        num_rays = origins.shape[0]
        rgb = RGBRenderer.combine_rgb(
            samples.rgb, weights[:, None], background_color=self.renderer_background(), ray_indices=samples.ray_ids,
            num_rays=num_rays,
        )
        accumulation = accumulate(weights, samples.ray_ids, num_rays)
        depth = accumulate(weights * samples.t, samples.ray_ids, num_rays) / accumulation.clamp(min=1e-6)
        return {
            "rgb": rgb.reshape(*shape, 3),
            "accumulation": accumulation.reshape(*shape, 1),
            "depth": depth.reshape(*shape, 1),
        }

    def renderer_background(self) -> str:
        # Random backgrounds in training teach exact alpha; evaluation composites on white.
        return "random" if self.training else "white"

    def _blend(self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        image = batch["image"].to(self.device)
        return RGBRenderer(background_color=self.renderer_background()).blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=image
        )

    def get_metrics_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        prediction, target = self._blend(outputs, batch)
        return {"psnr": -10 * torch.log10(torch.mean((prediction - target) ** 2))}

    def get_loss_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor], metrics_dict=None) -> Dict[str, Tensor]:
        prediction, target = self._blend(outputs, batch)
        return {"rgb_loss": torch.mean((prediction - target) ** 2)}

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> tuple[Dict[str, float], Dict[str, Tensor]]:
        prediction, target = self._blend(outputs, batch)
        psnr = float(-10 * torch.log10(torch.mean((prediction - target) ** 2)))
        return {"psnr": psnr}, {"img": torch.cat([target, prediction], dim=1), "accumulation": outputs["accumulation"]}


nerfsim_object_method = MethodSpecification(
    config=TrainerConfig(
        method_name="nerfsim-object",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=5000,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(
                    orientation_method="none",
                    center_method="none",
                    auto_scale_poses=False,
                    scale_factor=1.0,
                    scene_scale=0.3,
                ),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=NerfsimObjectModelConfig(),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-3, max_steps=5000),
            }
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="tensorboard",
    ),
    description="nerfsim's lean object NeRF: multi-scale K-Planes and a small MLP, occupancy-skipped, one object.",
)
