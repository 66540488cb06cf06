"""Publishing a job's results: folders zipped, the loop's checkpoint left out, a new version
replacing the old in one rename, and a copy to an fsspec mirror; structured logs."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from service.logs import JsonFormatter, job_context
from service.storage import Storage
from service.tasks import publish_artifacts
from tests.service.jobs import strings


def make_work(job_dir: Path, psi: str) -> None:
    work = job_dir / "work"
    (work / "dataset" / "images").mkdir(parents=True)
    (work / "dataset" / "images" / "000000.png").write_bytes(b"png")
    (work / "dataset" / "annotations.json").write_text("{}")
    (work / "samples").mkdir()
    (work / "samples" / "iter0000_0.png").write_bytes(b"png")
    (work / "psi.json").write_text(psi)
    (work / "checkpoint.pt").write_bytes(b"state")
    (work / ".checkpoint.pt.tmp").write_bytes(b"half-written")


def test_results_are_published_without_the_checkpoint(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "root", mirror=(tmp_path / "mirror").as_uri())
    job_dir = storage.record_dir("job", "acme", "job-0123456789abcdef")
    make_work(job_dir, '{"version": 1}')
    assert publish_artifacts(job_dir, storage) == {n: n for n in ("dataset.zip", "psi.json", "samples.zip")}
    artifacts = job_dir / "artifacts"
    with zipfile.ZipFile(artifacts / "dataset.zip") as bundle:
        assert sorted(bundle.namelist()) == ["annotations.json", "images/000000.png"]
    mirrored = tmp_path / "mirror" / "tenants" / "acme" / "jobs" / "job-0123456789abcdef" / "artifacts"
    assert sorted(p.name for p in mirrored.iterdir()) == ["dataset.zip", "psi.json", "samples.zip"]

    # A retried job publishes again: the new version replaces the old whole, nothing is left over.
    (job_dir / "work" / "psi.json").write_text('{"version": 2}')
    (job_dir / "work" / "samples" / "iter0000_0.png").unlink()
    (job_dir / "work" / "samples").rmdir()
    publish_artifacts(job_dir, storage)
    assert json.loads((artifacts / "psi.json").read_text()) == {"version": 2}
    assert sorted(p.name for p in artifacts.iterdir()) == ["dataset.zip", "psi.json"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["artifacts", "work"]
    assert json.loads((mirrored / "psi.json").read_text()) == {"version": 2}
    assert not (mirrored / "artifacts").exists()


def test_logs_are_json_lines_with_the_job_id() -> None:
    record = logging.LogRecord("service.tasks", logging.INFO, __file__, 1, "job started", None, None)
    record.attempt = 2
    with job_context("job-42"):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job started" and line["job_id"] == "job-42" and line["attempt"] == 2
    assert line["level"] == "info" and line["time"].endswith("Z")
    assert "job_id" not in json.loads(JsonFormatter().format(record))


def test_published_json_holds_no_server_path(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "root")
    job_dir = storage.record_dir("job", "acme", "job-0123456789abcdef")
    make_work(job_dir, "{}")
    target = storage.record_dir("target", "acme", "target-1") / "annotations.json"
    config = {"scene": {"spec": str(job_dir / "scene.json")}, "targets": {"val": str(target), "test": None},
              "detector": {"weights": str(storage.record_dir("weights", "acme", "weights-1") / "weights.pt")},
              "seed": 3}
    (job_dir / "work" / "config.json").write_text(json.dumps(config))
    report = {"config": config, "plots": ["plots/map.png"], "out": str(job_dir / "work"),
              "dataset": str(job_dir / "work" / "dataset"), "error": f"{target}: box 3 outside the image"}
    (job_dir / "work" / "report.json").write_text(json.dumps(report))
    publish_artifacts(job_dir, storage)

    published = json.loads((job_dir / "artifacts" / "report.json").read_text())
    assert not [s for s in strings(published) if s.startswith("/") or str(tmp_path) in s], published
    assert published["config"] == json.loads((job_dir / "artifacts" / "config.json").read_text())
    assert published["config"]["scene"]["spec"] == "scene.json" and published["config"]["seed"] == 3
    assert published["config"]["targets"]["val"] == "targets/target-1/annotations.json"
    assert published["config"]["detector"]["weights"] == "weights/weights-1/weights.pt"
    assert published["out"] == "." and published["dataset"] == "dataset" and published["plots"] == ["plots/map.png"]
    assert published["error"] == "targets/target-1/annotations.json: box 3 outside the image"
    # The loop's own copy keeps its paths: a resumed run compares its config with it.
    assert json.loads((job_dir / "work" / "config.json").read_text()) == config
    assert (job_dir / "artifacts" / "psi.json").read_text() == "{}"  # nothing to rewrite: copied as it is
