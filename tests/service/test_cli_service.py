"""The service's commands of the ``nerfsim`` CLI: ``nerfsim optimize`` reads a JobSpec (the REST
body: one saved to a file runs unchanged); bad job files are named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.presets import DEFAULT_PRESET
from service.cli import main
from tests.service.jobs import merged, setup_job_inputs, tiny_job

DEMO_ASSET = str(Path(__file__).parents[2] / "renderer" / "demo_assets" / "mug")


@pytest.fixture
def local_job(tmp_path: Path) -> dict:
    """A JobSpec whose references are local paths (the validation file need not be valid here)."""
    (tmp_path / "val.json").write_text("{}")
    return {"scene": {"assets": [DEMO_ASSET]}, "targets": {"val": "val.json"}}


def optimize(config: Path, *extra: str) -> int:
    return main(["optimize", "--config", str(config), "--out", str(config.parent / "out"), *extra])


def test_optimize_refuses_bad_job_files(tmp_path: Path, local_job: dict, capsys) -> None:
    assert optimize(tmp_path / "missing.json") == 2
    assert "missing.json: job file not found" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert optimize(tmp_path / "broken.json") == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "unknown.json").write_text(json.dumps({**local_job, "warp": 9}))
    assert optimize(tmp_path / "unknown.json") == 2
    assert "warp\n  Extra inputs are not permitted" in capsys.readouterr().err
    (tmp_path / "no-target.json").write_text(json.dumps({"scene": local_job["scene"]}))
    assert optimize(tmp_path / "no-target.json") == 2
    assert "targets\n  Field required" in capsys.readouterr().err
    (tmp_path / "no-such-asset.json").write_text(json.dumps(merged(local_job, {"scene": {"assets": ["asset-x"]}})))
    assert optimize(tmp_path / "no-such-asset.json") == 2
    assert "asset asset-x: no such file, and no tenant given" in capsys.readouterr().err


def test_optimize_chooses_a_preset_by_name_and_refuses_unknown_or_benchmark_only_settings(
        tmp_path: Path, local_job: dict, capsys) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps(local_job))
    assert optimize(config, "--preset", "magic") == 2
    assert "job.json: preset: unknown preset 'magic'; use one of ['appearance', 'neural-sim-appearance'" in capsys.readouterr().err
    config.write_text(json.dumps(merged(local_job, {"outer": {"lookahead_bin_share": 0.5}})))
    assert optimize(config) == 2
    assert "outer.lookahead_bin_share\n  Extra inputs are not permitted" in capsys.readouterr().err
    config.write_text(json.dumps(merged(local_job, {"outer": {"estimator": "lookahead"}})))
    assert optimize(config) == 2
    assert "outer.estimator\n  Input should be 'pathwise', 'score' or 'both'" in capsys.readouterr().err
    # A known preset (the command line's wins over the file's) gets as far as reading the target set.
    config.write_text(json.dumps({**local_job, "preset": "magic"}))
    assert optimize(config, "--preset", "uniform") == 2
    captured = capsys.readouterr().err
    assert "preset uniform: method uniform" in captured and "val.json" in captured


def test_optimize_resumes_a_run_folder_with_the_preset_it_started_with(tmp_path: Path, local_job: dict,
                                                                       capsys) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps(local_job))  # no preset: a new folder's run gets today's default
    assert optimize(config) == 2  # (each run gets as far as reading the target set)
    assert f"preset {DEFAULT_PRESET}: " in capsys.readouterr().err
    # The run in --out started under a nerfsim whose default was another preset: it goes on with that one.
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "config.json").write_text(json.dumps({"preset": "random-search"}))
    assert optimize(config) == 2
    captured = capsys.readouterr().err
    assert "the run there started with preset random-search" in captured
    assert "preset random-search: method random-search" in captured
    config.write_text(json.dumps({**local_job, "preset": "uniform"}))  # a preset the job names wins
    assert optimize(config) == 2
    assert "preset uniform: method uniform" in capsys.readouterr().err


def test_a_rest_body_saved_to_a_file_runs_unchanged(client, make_key, settings, asset_zip: Path, coco_zip: Path,
                                                    tmp_path: Path) -> None:
    headers = make_key("cli")
    body = tiny_job(*setup_job_inputs(client, headers, asset_zip, coco_zip), budget={"outer_iterations": 1})
    assert client.post("/v1/jobs", headers=headers, json=body).status_code == 201
    tenant = next((settings.storage_root / "tenants").iterdir()).name
    config = tmp_path / "job.json"
    config.write_text(json.dumps(body))
    assert optimize(config, "--storage", str(settings.storage_root), "--tenant", tenant) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["iterations_done"] == 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["scene"]["spec"]["objects"][0]["name"] == "box"


def test_presets_are_listed(capsys) -> None:
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("appearance (default): ") and "\nuniform: " in listed
