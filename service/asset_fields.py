"""The typed, bounded overrides of an asset build: the object NeRF's model and trainer settings,
and the splat trainer's.

Allowlists like the job's fields (nerfsim_client.spec): unknown fields are refused, nothing is
coerced, every number is bounded so that one build cannot exhaust a worker's memory. The steps,
time budget and seed are set by the build's own fields, never here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from nerfsim_client.spec import Strict


class ObjectFieldOverrides(Strict):
    """renderer.object_field.ObjectFieldConfig settings."""

    encoding: Literal["triplane", "hash"] | None = None
    plane_resolutions: list[Annotated[int, Field(ge=4, le=512)]] | None = Field(None, min_length=1, max_length=6)
    plane_components: int | None = Field(None, ge=1, le=64)
    hash_levels: int | None = Field(None, ge=1, le=24)
    hidden_dim: int | None = Field(None, ge=8, le=512)
    occupancy_resolution: int | None = Field(None, ge=8, le=256)
    density_bias: float | None = Field(None, ge=-20, le=20)


class ObjectTrainerOverrides(Strict):
    """renderer.train_object.ObjectTrainerConfig settings."""

    rays_per_step: int | None = Field(None, ge=1, le=65_536)
    samples_per_ray: int | None = Field(None, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1)
    final_learning_rate: float | None = Field(None, gt=0, le=1)
    alpha_weight: float | None = Field(None, ge=0, le=100)
    occupancy_every: int | None = Field(None, ge=1, le=100_000)
    shell_cells: int | None = Field(None, ge=1, le=256)
    hull_fit_steps: int | None = Field(None, ge=0, le=100_000)
    visibility_rays: int | None = Field(None, ge=0, le=10_000_000)


class SplatTrainerOverrides(Strict):
    """renderer.train_splat.SplatTrainConfig settings (splat builds: training and baking)."""

    initial_gaussians: int | None = Field(None, ge=4, le=1_000_000)
    max_gaussians: int | None = Field(None, ge=4, le=3_000_000)
    sh_degree: int | None = Field(None, ge=0, le=3)
    ssim_weight: float | None = Field(None, ge=0, le=1)
    densify_from: int | None = Field(None, ge=1, le=100_000)
    densify_every: int | None = Field(None, ge=1, le=100_000)
    densify_until_fraction: float | None = Field(None, ge=0, le=1)
    grad_threshold: float | None = Field(None, gt=0, le=1000)
    prune_opacity: float | None = Field(None, ge=0, lt=1)
