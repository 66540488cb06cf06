"""The Gaussians being trained by ``renderer.train_splat``, their Adam optimiser, and adaptive density
control as in 3DGS: Gaussians whose mean screen-space positional gradient is large are cloned
(small ones) or split in two smaller ones (large ones), and nearly transparent ones are pruned.

nerfsim's CPU rasteriser does not expose the projected centres, so the screen-space gradient is
read off the 3D one: a centre moving by dx across the view moves on screen by about
``dx * focal / depth``, so ``|dL/d screen| ~ |dL/dx| * depth / focal``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from renderer.splat import Gaussians, quat_to_rotmat

if TYPE_CHECKING:
    from renderer.train_splat import SplatTrainConfig

_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
SPLIT_SHRINK = 1.6
"""A split Gaussian's two halves are this many times narrower (3DGS)."""


class DensityControl:
    """Leaf tensors of the Gaussians, one Adam group per kind (3DGS's learning rates), the
    screen-space gradient statistics, and the clone / split / prune step."""

    def __init__(self, start: Gaussians, config: "SplatTrainConfig", extent: float) -> None:
        self.config, self.extent = config, extent
        values = [start.means, start.log_scales, start.quats, start.opacity_logits, start.sh[:, :1], start.sh[:, 1:]]
        self.params = {name: value.detach().clone().requires_grad_(True) for name, value in zip(_NAMES, values)}
        rates = [config.lr_means * extent, config.lr_log_scales, config.lr_quats, config.lr_opacity,
                 config.lr_sh_dc, config.lr_sh_rest]
        self.optimizer = torch.optim.Adam(
            [{"params": [self.params[name]], "lr": lr, "name": name} for name, lr in zip(_NAMES, rates)], eps=1e-15
        )
        self._reset_statistics()

    @property
    def num(self) -> int:
        return self.params["means"].shape[0]

    def gaussians(self) -> Gaussians:
        """The current Gaussians (differentiable w.r.t. the leaf tensors)."""
        p = self.params
        return Gaussians(p["means"], p["log_scales"], p["quats"], p["opacity_logits"],
                         torch.cat([p["sh_dc"], p["sh_rest"]], dim=1))

    def set_means_lr(self, lr: float) -> None:
        self.optimizer.param_groups[0]["lr"] = lr

    def _reset_statistics(self) -> None:
        self.grad_sum = torch.zeros(self.num)
        self.grad_count = torch.zeros(self.num)

    @torch.no_grad()
    def record_gradients(self, to_screen: Tensor) -> None:
        """Add this step's screen-space gradient of each Gaussian that received one (after
        ``backward``); ``to_screen``: per Gaussian, the factor from the 3D gradient's norm to the
        statistic's units (depth / focal length in pixels, times the pixels the loss averages)."""
        grad = self.params["means"].grad
        if grad is None:
            return
        screen = grad.norm(dim=-1) * to_screen.clamp(min=0)
        seen = screen > 0
        self.grad_sum += torch.where(seen, screen, torch.zeros_like(screen))
        self.grad_count += seen.float()

    @torch.no_grad()
    def densify_and_prune(self, generator: torch.Generator) -> None:
        """Clone or split the Gaussians with a large mean screen-space gradient (as many as
        ``max_gaussians`` allows, largest gradient first), then prune the transparent ones."""
        config, p = self.config, self.params
        mean_grad = self.grad_sum / self.grad_count.clamp(min=1)
        room = max(config.max_gaussians - self.num, 0)
        candidates = (mean_grad >= config.grad_threshold).nonzero().squeeze(-1)
        candidates = candidates[mean_grad[candidates].argsort(descending=True)][:room]
        size = p["log_scales"][candidates].exp().amax(dim=-1)
        large = size > config.dense_fraction * self.extent
        clone, split = candidates[~large], candidates[large]

        # Every row of the new set names the row it comes from; split rows come twice, moved.
        keep = torch.ones(self.num, dtype=torch.bool)
        keep[split] = False
        source = torch.cat([keep.nonzero().squeeze(-1), clone, split, split])
        new = {name: value[source].clone() for name, value in p.items()}
        if split.numel():
            first = self.num - split.numel() + clone.numel()  # rows of the split halves start here
            halves = slice(first, None)
            scales = new["log_scales"][halves].exp()
            offsets = torch.randn(scales.shape, generator=generator) * scales
            new["means"][halves] += (quat_to_rotmat(new["quats"][halves]) @ offsets[..., None])[..., 0]
            new["log_scales"][halves] -= math.log(SPLIT_SHRINK)
        visible = torch.sigmoid(new["opacity_logits"]) >= config.prune_opacity
        if visible.sum() >= 4:  # never prune a splat away entirely
            source, new = source[visible], {name: value[visible] for name, value in new.items()}
        self._replace(new, source)
        self._reset_statistics()

    def _replace(self, new: dict[str, Tensor], source: Tensor) -> None:
        """Swap in the new leaf tensors; Adam's moments follow each row's source Gaussian."""
        for group in self.optimizer.param_groups:
            old = group["params"][0]
            fresh = new[group["name"]].requires_grad_(True)
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = state[key][source].clone()
                self.optimizer.state[fresh] = state
            group["params"] = [fresh]
            self.params[group["name"]] = fresh
