"""Test-wide settings: single-threaded math (the CI machine has 2 shared cores, and busy-waiting
OpenMP threads made training steps 30x slower there), and everything offline."""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(__file__).resolve().parent.parent / ".yolo"))

import torch  # noqa: E402  (after the environment above)

torch.set_num_threads(1)
