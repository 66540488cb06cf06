"""The client side of ``deploy/smoke.sh``: one tiny job through a running nerfsim API.

Runs inside the worker image (it has the renderer): renders a small labelled target set from
the bundled demo scene, uploads the demo objects as assets and the set as a COCO target,
creates a one-iteration CPU job (a JobSpec with few settings) through the SDK, waits for it and
downloads one artifact. Prints ``smoke-client: downloaded <name>`` last; exits non-zero with
the reason on any failure. The API key comes from ``NERFSIM_SMOKE_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from nerfsim_client import Client, NerfsimError

from renderer.scene_spec import read_scene_spec
from service.archives import zip_folder
from service.demo import render_target_set

TINY_JOB = {
    "budget": {"outer_iterations": 1, "images_per_iteration": 8, "inner_steps": 2, "final_images": 8,
               "final_epochs": 1},
    "scene": {"procedural_backgrounds": 2},
    "detector": {"image_size": 64},
    "device": "cpu",
    "seed": 0,
}
"""A job (a JobSpec without its references) that exercises every stage (render, train, psi
step, final training, artifacts) in about a minute of CPU."""
TARGET_IMAGES = 8


def log(message: str) -> None:
    print(f"smoke-client: {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the API's base URL")
    parser.add_argument("--out", type=Path, required=True, help="folder for uploads and the downloaded artifact")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="limit for the assets and the job")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout_s
    uploads = args.out / "uploads"
    shutil.rmtree(uploads, ignore_errors=True)
    uploads.mkdir(parents=True)

    spec = read_scene_spec("demo")
    log(f"rendering {TARGET_IMAGES} labelled target images of {spec.source}")
    size = TINY_JOB["detector"]["image_size"]
    target = render_target_set("demo", uploads / "real", count=TARGET_IMAGES, size=size)
    (target / "data.yaml").unlink()  # uploaded as COCO: annotations.json and images/
    shutil.rmtree(target / "labels")
    target_zip = zip_folder(target, uploads / "real.zip")

    try:
        with Client(args.url, os.environ["NERFSIM_SMOKE_KEY"], progress=False) as client:
            assets = [client.upload_asset(zip_folder(obj.path, uploads / f"{obj.name}.zip"), obj.name, "nerfsim")
                      for obj in spec.objects]
            assets = [client.wait_asset(asset, timeout=max(1.0, deadline - time.monotonic())) for asset in assets]
            log(f"assets ready: {', '.join(a.name for a in assets)}")
            real = client.upload_target(target_zip, "smoke-real", role="both", format="coco")
            request = {**TINY_JOB, "scene": {**TINY_JOB["scene"], "assets": assets, "fov_deg": spec.fov_deg},
                       "targets": {"val": real, "test": real}}
            started = time.monotonic()
            job = client.create_job(request)
            log(f"job {job.id} {job.status}: {job.data['spec']['budget']}")
            job.wait(timeout=max(1.0, deadline - time.monotonic()), progress=False)
            log(f"job succeeded in {time.monotonic() - started:.0f} s; artifacts: {', '.join(job.artifacts)}")
            name = "report.json" if "report.json" in job.artifacts else next(iter(job.artifacts))
            path = job.download(name, args.out / name, progress=False)
    except NerfsimError as error:  # a failed asset or job, a timeout, an error answer: the reason
        sys.exit(f"smoke-client: {error}")
    if path.stat().st_size == 0:
        sys.exit(f"smoke-client: artifact {name} is empty")
    if name == "report.json":
        report = json.loads(path.read_text())
        log(f"report: {report.get('iterations_done')} outer iteration(s), {report.get('images_rendered')} images "
            f"rendered, {report.get('seconds')} s")
    log(f"downloaded {name}")


if __name__ == "__main__":
    main()
