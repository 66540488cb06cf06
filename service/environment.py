"""The environment a nerfsim process starts from, set before torch or Ultralytics is imported.

Every variable is only a default: a value the user (or a container image) set wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def ultralytics_config_dir() -> Path:
    """Where Ultralytics keeps its settings file for nerfsim: the user's config directory
    (platformdirs' when installed, else ``$XDG_CONFIG_HOME`` or ``~/.config``), under
    ``nerfsim/ultralytics``. Ultralytics' own default would be a ``.yolo`` folder in whatever
    directory a command was started from (nerfsim used to set that)."""
    try:
        from platformdirs import user_config_dir
    except ImportError:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    else:
        base = Path(user_config_dir())
    return base / "nerfsim" / "ultralytics"


def offline_environment() -> None:
    """No downloads at run time, and idle OpenMP threads that sleep (busy-waiting threads made
    training steps 30x slower on a shared machine); Ultralytics' settings in the user's config
    directory, not in the working directory."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(ultralytics_config_dir()))
