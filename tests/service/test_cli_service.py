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
    (tmp_path / "unknown.json").write_text(json.dumps({"scene": {"spec": "demo"}, "warp": 9}))
    assert main(["optimize", "--config", str(tmp_path / "unknown.json"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown.json: unknown job settings ['warp']" in capsys.readouterr().err
    (tmp_path / "no-target.json").write_text(json.dumps({"scene": {"spec": "demo"}}))
    assert main(["optimize", "--config", str(tmp_path / "no-target.json"), "--out", str(tmp_path / "out")]) == 2
    assert "targets.val" in capsys.readouterr().err
    (tmp_path / "flat.json").write_text(json.dumps({"scene": "demo"}))  # from before the sections
    assert main(["optimize", "--config", str(tmp_path / "flat.json"), "--out", str(tmp_path / "out")]) == 2
    assert "scene: a section is a JSON object" in capsys.readouterr().err


def test_optimize_chooses_a_preset_by_name_and_refuses_unknown_or_benchmark_only_settings(tmp_path: Path,
                                                                                          capsys) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"scene": {"spec": "demo"}}))
    assert main(["optimize", "--config", str(config), "--out", str(tmp_path / "out"), "--preset", "magic"]) == 2
    assert "job.json: preset: unknown preset 'magic'; use one of ['neural-sim-appearance'" in capsys.readouterr().err
    config.write_text(json.dumps({"outer": {"lookahead_bin_share": 0.5}}))
    assert main(["optimize", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "['outer.lookahead_bin_share']: benchmark-only settings" in capsys.readouterr().err
    config.write_text(json.dumps({"outer": {"estimator": "lookahead"}}))
    assert main(["optimize", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "outer.estimator: 'lookahead' is a benchmark-only value" in capsys.readouterr().err
    # A known preset (the command line's wins over the file's) gets as far as the missing target.
    config.write_text(json.dumps({"scene": {"spec": "demo"}, "preset": "magic"}))
    assert main(["optimize", "--config", str(config), "--out", str(tmp_path / "out"), "--preset", "uniform"]) == 2
    captured = capsys.readouterr().err
    assert "preset uniform: method uniform" in captured and "targets.val" in captured


def test_presets_are_listed(capsys) -> None:
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("neural-sim-appearance (default): ") and "\nuniform: " in listed
