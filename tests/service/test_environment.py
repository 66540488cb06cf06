"""Ultralytics' settings go to the user's config directory, not into a ``.yolo`` folder of
whatever directory a command was started from; a YOLO_CONFIG_DIR the user set wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.environment import offline_environment, ultralytics_config_dir

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_the_users_config_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    assert ultralytics_config_dir() == tmp_path / "config" / "nerfsim" / "ultralytics"
    offline_environment()
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "config" / "nerfsim" / "ultralytics")

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    offline_environment()
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_a_command_leaves_no_yolo_folder_where_it_ran(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "YOLO_CONFIG_DIR"}
    environment.update(PYTHONPATH=os.pathsep.join((str(ROOT), str(ROOT / "client"))), XDG_CONFIG_HOME=str(tmp_path / "config"), OMP_NUM_THREADS="1")
    here = tmp_path / "somewhere"
    here.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "render", "--scene", "demo", "--num", "1", "--size", "32",
         "--threads", "1", "--out", "out"],
        cwd=here, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in here.iterdir()) == ["out"]
    assert (tmp_path / "config" / "nerfsim" / "ultralytics" / "Ultralytics" / "settings.json").is_file()
