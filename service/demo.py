"""``nerfsim demo``: the main job on the bundled demo scene, through the embedded service.

It starts the service as ``nerfsim serve`` does (an embedded Redis, a worker process, the API
on a free local port), then acts as a client over HTTP: uploads the demo objects as assets and a
labelled "real" set, creates the job, follows its progress events, downloads the dataset,
detector and report, and prints where they are. No real photographs ship with nerfsim, so the
"real" sets are rendered from the demo scene with a shifted scene-parameter distribution (the
objects seen from one side only): the job has to find that shift. The validation set drives
the loop; a separate test set (the same shift, other draws) scores the final detector and the
job's uniform baseline (the same detector trained on renders from the starting psi), so the
demo prints whether the loop helped on images it never saw.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path

from service.errors import ServiceError
from service.progress_view import StageProgress
from service.settings import ServiceSettings

TARGET_AZIMUTH_BINS = [0, 0, 1, 1, 0, 0, 0, 0]
"""The demo's "real" photos show the objects from 90 to 180 degrees of azimuth only."""
SEEDS = {"validation": 7, "test": 8}
"""Render seeds of the two stand-in sets: the same shift, different images."""


def demo_budget(quick: bool) -> dict:
    """Job settings sized for 2 CPU cores (the full demo, ``bash scripts/demo.sh`` after set-up:
    3.2 minutes with the ``appearance`` default preset, which takes no detector gradient, on 2
    shared cores with a test run beside it, 2026-12-06; 8.1 minutes with the previous default
    and the real-only baseline, which it leaves out: the demo's "real" photos are renders, so
    a detector trained on them alone says nothing a user would ask)."""
    final = {"real_only_baseline": False}
    if quick:
        return {"budget": {"outer_iterations": 3, "images_per_iteration": 16, "inner_steps": 4, "final_images": 32,
                           "final_epochs": 2}, "detector": {"image_size": 64, "sample_images": 2},
                "hypergradient": {"inverse_hessian_steps": 2}, "final": final}
    return {"budget": {"outer_iterations": 10, "images_per_iteration": 32, "inner_steps": 10, "final_images": 400,
                       "final_epochs": 30}, "detector": {"image_size": 64, "sample_images": 4}, "final": final}


def render_target_set(scene: str, out_dir: Path, count: int, size: int, seed: int = 7) -> Path:
    """The stand-in "real" set: ``count`` labelled renders of ``scene`` from a shifted psi."""
    from optimizer.dataset import render_dataset
    from optimizer.psi import Psi, PsiConfig
    from renderer.scene_spec import read_scene_spec, scene_renderer

    spec = read_scene_spec(scene)
    renderer = scene_renderer(spec)
    config = PsiConfig(num_classes=len(renderer.fields), num_backgrounds=len(renderer.backgrounds))
    psi = Psi.from_target(config, azimuth_bin_probs=TARGET_AZIMUTH_BINS)
    # A bar on a terminal only: in a log it would print a copy of itself at every refresh.
    render_dataset(renderer, psi, count, size, out_dir, spec.class_names, seed=seed, progress=sys.stderr.isatty())
    return out_dir


def _serve_in_thread(settings: ServiceSettings) -> tuple[str, object, threading.Thread]:
    import uvicorn

    from service.api.main import create_app
    from service.redis_server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo's API did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def run_demo(out: Path, settings: ServiceSettings, quick: bool = False, scene: str = "demo") -> dict:
    """Run the demo job; returns the finished job's record."""
    from renderer.scene_spec import read_scene_spec
    from service.archives import zip_folder
    from nerfsim_client import AssetBuildError, Client
    from service.embedded import EmbeddedService
    from service.keys import KeyStore
    from service.logs import configure_logging
    from service.storage import Storage

    out = Path(out)
    if settings.storage_root == ServiceSettings.model_fields["storage_root"].default:
        settings = settings.model_copy(update={"storage_root": out / "service"})
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    # The demo talks to a person: the service's own logs (and the worker's, in worker.log) stay
    # quiet unless something goes wrong.
    configure_logging(json_lines=False, level=logging.WARNING)
    spec = read_scene_spec(scene)
    uploads = out / "uploads"
    shutil.rmtree(uploads, ignore_errors=True)
    uploads.mkdir(parents=True)

    print(f"nerfsim demo: rendering the stand-in 'real' validation and test sets from {spec.source}")
    zips = {}
    for role, seed in SEEDS.items():
        target = render_target_set(scene, uploads / role, count=24 if quick else 48, size=64, seed=seed)
        (target / "data.yaml").unlink()  # upload it as COCO: annotations.json and images/
        shutil.rmtree(target / "labels")
        zips[role] = zip_folder(target, uploads / f"{role}.zip")

    with EmbeddedService(settings, workers=1, worker_log=out / "worker.log") as service:
        url, server, thread = _serve_in_thread(service.settings)
        key, _ = KeyStore(None, Storage(service.settings.storage_root)).create("demo", "nerfsim demo")
        client = Client(url, key, progress=False)
        try:
            print(f"nerfsim demo: service at {url} (Redis {service.settings.redis_url}, worker log {out / 'worker.log'})")
            assets = []
            for obj in spec.objects:
                if obj.path.suffix in {".yml", ".yaml"}:
                    archive, kind = zip_folder(obj.path.parent, uploads / f"{obj.name}.zip"), "nerfstudio"
                else:
                    archive, kind = zip_folder(obj.path, uploads / f"{obj.name}.zip"), "nerfsim"
                assets.append(client.upload_asset(archive, obj.name, kind))
            try:
                assets = [client.wait_asset(asset) for asset in assets]
            except AssetBuildError as error:
                raise ServiceError(f"demo asset failed: {error}") from error
            sets = {role: client.upload_target(path, f"demo-{role}", role=role, format="coco") for role, path in zips.items()}
            spec_body = {"scene": {"assets": assets, "procedural_backgrounds": spec.procedural_backgrounds or 4,
                                   "fov_deg": spec.fov_deg},
                         "targets": {"val": sets["validation"], "test": sets["test"]}, **demo_budget(quick)}
            job = client.create_job(spec_body, idempotency_key=f"demo-{out.resolve()}")
            print(f"nerfsim demo: job {job.id} queued: preset {job.preset}, {job.data['spec']['budget']}")
            job = _follow(job)
            if job.status != "succeeded":
                raise ServiceError(f"demo job {job.id} {job.status}: {job.error} (see {out / 'worker.log'})")
            results = _download(job, out)
        finally:
            client.close()
            server.should_exit = True
            thread.join(30)
    print(f"nerfsim demo: done. Results in {out.resolve()}:")
    for name, path in results.items():
        print(f"  {name:<14} {path}")
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    for line in summary_lines(report):
        print(f"  {line}")
    return job.data


def summary_lines(report: dict) -> list[str]:
    """What the demo says about the job's result: the final detector's metrics, and on the test
    set the uniform baseline's beside them with the difference and its bootstrap interval."""
    lines = [f"final detector on the {split} set: mAP50-95 {numbers['map50_95']:.3f}, mAP50 {numbers['map50']:.3f}"
             for split, numbers in report.get("final", {}).items()]
    baseline, difference = report.get("baseline", {}), report.get("difference")
    if difference is None:
        lines.append(f"no uniform baseline: {baseline.get('skipped', 'switched off')}")
        return lines
    interval = difference["map50_95_bootstrap"]
    lines.append(f"uniform psi (no loop) on the {baseline['evaluated_on']}: mAP50-95 {baseline['test']['map50_95']:.3f}"
                 f"; optimised {report['final']['test']['map50_95']:.3f}")
    lines.append(f"optimised - uniform: {difference['map50_95']:+.3f} mAP50-95 (95 % bootstrap over the "
                 f"{baseline['test_images']} test images: {interval['low']:+.3f} to {interval['high']:+.3f})")
    return lines


def _follow(job):
    """Show the job's progress from its event stream (service.progress_view: a bar per long
    stage, or a few plain lines when the output is not a terminal); returns it, finished."""
    view = StageProgress()
    for event in job.events():
        if event.event == "status":
            view.line(f"job {event.data['status']}" + (f": {event.data['error']}" if event.data.get("error") else ""))
        elif event.event == "progress":
            view.progress(event.data)
    view.close()
    return job.refresh()


def _download(job, out: Path) -> dict[str, Path]:
    results = {}
    for name in job.artifacts:
        path = job.download(name, out / name)
        if name == "dataset.zip":
            shutil.rmtree(out / "dataset", ignore_errors=True)
            with zipfile.ZipFile(path) as bundle:
                bundle.extractall(out / "dataset")
            path.unlink()
            results["dataset"] = out / "dataset"
        else:
            results[name] = path
    return results
