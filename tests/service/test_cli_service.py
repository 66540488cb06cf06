"""The service's commands of the ``nerfsim`` CLI: bad job configs are named errors."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main


def test_optimize_refuses_bad_config_files(tmp_path: Path, capsys) -> None:
    assert main(["optimize", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.json: job config not found" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["optimize", "--config", str(tmp_path / "broken.json"), "--out", str(tmp_path / "out")]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "unknown.json").write_text(json.dumps({"scene": "demo", "warp": 9}))
    assert main(["optimize", "--config", str(tmp_path / "unknown.json"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown.json: unknown job settings ['warp']" in capsys.readouterr().err
    (tmp_path / "no-target.json").write_text(json.dumps({"scene": "demo"}))
    assert main(["optimize", "--config", str(tmp_path / "no-target.json"), "--out", str(tmp_path / "out")]) == 2
    assert "target_val" in capsys.readouterr().err
