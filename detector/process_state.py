"""The process-wide state Ultralytics' trainer changes for good, put back after a training:
whatever runs after a final training in the same process (the next job, a benchmark's next
arm) must not depend on it having run."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

TRAINER_ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")
"""Environment variables Ultralytics' seeding sets and its clean-up deletes (whatever the
caller had), which child processes started later would inherit."""


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Put back on exit: torch's thread count (Ultralytics' ``select_device`` sets it to
    cpu_count - 1), the global random streams of ``random``, numpy and torch (its seeding
    reseeds them and training draws from them), torch's deterministic-algorithm flags (its
    clean-up switches them off) and :data:`TRAINER_ENVIRONMENT`."""
    threads = torch.get_num_threads()
    python_random, numpy_random = random.getstate(), np.random.get_state()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn_deterministic = torch.backends.cudnn.deterministic
    fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory
    environment = {name: os.environ.get(name) for name in TRAINER_ENVIRONMENT}
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_random)
        np.random.set_state(numpy_random)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.utils.deterministic.fill_uninitialized_memory = fill_uninitialized
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
