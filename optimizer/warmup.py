"""The loop's warm-up: rounds of inner_steps fine-tuning steps on fresh images from the
config's initial psi, whatever the method, so that every method of a seed leaves it with the
same detector (see final_init); kept in a cache folder that runs of the same warm-up share."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from detector.train import FinetuneState
from optimizer.config import OptimizeConfig, plain
from optimizer.psi import OptimizerError, Psi
from optimizer.seeds import generator

if TYPE_CHECKING:
    from optimizer.context import LoopContext


def _round_steps(config: OptimizeConfig) -> int:
    """Fine-tuning steps per warm-up round (each on a fresh batch)."""
    return config.budget.inner_steps or config.detector.warmup_steps


def warmup_images(config: OptimizeConfig) -> int:
    """Images the warm-up renders: one batch per round."""
    round_steps = _round_steps(config)
    if not round_steps:
        return 0
    return math.ceil(config.detector.warmup_steps / round_steps) * config.budget.images_per_iteration


def _key_settings(loop: LoopContext) -> dict:
    """What keys the warm-up cache: the settings the warm-up reads
    (OptimizeConfig.warmup_settings), torch's thread count (other counts round differently)
    and the photos' priors (the warm-up's psi depends on them too)."""
    settings = plain(loop.config.warmup_settings())
    settings["torch_threads"] = torch.get_num_threads()
    if loop.priors is not None and loop.priors["values"]:
        settings["priors"] = loop.priors["values"]
    return settings


def warm_up(loop: LoopContext) -> None:
    """Warm up ``loop.detector`` and ``loop.finetune_state`` (one batch for all steps would
    overfit it, so each round draws fresh images). With a ``loop.warmup_cache`` folder, the
    result (detector, inner optimiser state, torch RNG state) is taken from the entry keyed by
    :func:`_key_settings` when it is there, and stored there otherwise; a run from the cache
    continues exactly as if it had trained the warm-up itself."""
    config, cache = loop.config, loop.warmup_cache
    entry = None
    if cache is not None:
        key = hashlib.sha256(json.dumps(_key_settings(loop), sort_keys=True).encode()).hexdigest()[:20]
        entry = Path(cache) / f"warmup_{key}.pt"
        if entry.is_file():
            try:
                saved = torch.load(entry, map_location="cpu", weights_only=True)
                loop.detector.load_state_dict(saved["detector"])
                loop.finetune_state = FinetuneState(**saved["finetune"])
                torch.set_rng_state(saved["torch_rng"])
            except Exception as error:  # torch raises several types for foreign or damaged files
                raise OptimizerError(f"{entry}: not a readable nerfsim warm-up ({error}); "
                                     "delete it to warm up again") from error
            loop.images_rendered = warmup_images(config)
            return
    warmup_psi = Psi.uniform(loop.psi_config).to(loop.device)
    round_steps = _round_steps(config)
    for first in range(0, config.detector.warmup_steps, round_steps):
        noise = warmup_psi.sample(config.budget.images_per_iteration, generator(config.seed, first, "warmup")).noise
        batch = loop.render(noise, -1, warmup_psi, round_index=first)
        steps = min(round_steps, config.detector.warmup_steps - first)
        loop.finetune_state = loop.train(loop.detector, batch, steps, loop.finetune_state, -1)
    if entry is not None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")  # runs may share the folder
        torch.save({"detector": {k: v.detach().cpu() for k, v in loop.detector.state_dict().items()},
                    "finetune": asdict(loop.finetune_state), "torch_rng": torch.get_rng_state()}, partial)
        partial.replace(entry)
