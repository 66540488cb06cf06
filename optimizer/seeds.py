"""Seeds of the closed loop: every draw comes from a generator seeded by (run seed, iteration,
purpose, further keys), so an outer iteration depends only on the state the previous one left
(which the checkpoint holds) and a resumed run reproduces the uninterrupted one bit for bit."""

from __future__ import annotations

import numpy as np
import torch

PURPOSES = ("render", "finetune", "candidate", "warmup", "final", "resample", "lookahead", "photometric")
"""What the loop draws for; a purpose's position keys its seeds, so new ones go at the end."""


def seed(run_seed: int, iteration: int, purpose: str, *more: int) -> int:
    """An independent seed for each (run seed, iteration, purpose, further keys)."""
    return int(np.random.SeedSequence([run_seed, iteration + 1, PURPOSES.index(purpose), *more]).generate_state(1)[0])


def generator(run_seed: int, iteration: int, purpose: str, *more: int) -> torch.Generator:
    """A CPU generator seeded by :func:`seed`."""
    return torch.Generator().manual_seed(seed(run_seed, iteration, purpose, *more))
