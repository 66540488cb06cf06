"""The client side of ``deploy/smoke.sh``: one tiny job through a running nerfsim API.

Runs inside the worker image (it has the renderer): renders a small labelled target set from
the bundled demo scene, uploads the demo objects as assets and the set as a COCO target,
creates a one-iteration CPU job with the top-level budget fields only, waits for it and
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

from renderer.scene_spec import read_scene_spec
from service.archives import zip_folder
from service.client import NerfsimClient
from service.demo import render_target_set

TINY_JOB = {
    "budget": {"outer_iterations": 1, "images_per_iteration": 8, "inner_steps": 2, "final_images": 8,
               "final_epochs": 1},
    "image_size": 64,
    "procedural_backgrounds": 2,
    "device": "cpu",
    "seed": 0,
}
"""A job that exercises every stage (render, train, psi step, final training, artifacts) in
about a minute of CPU."""
TARGET_IMAGES = 8
POLL_S = 2.0


def log(message: str) -> None:
    print(f"smoke-client: {message}", flush=True)


def wait_until(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        sys.exit(f"smoke-client: timed out waiting for {what}")
    time.sleep(POLL_S)


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
    target = render_target_set("demo", uploads / "real", count=TARGET_IMAGES, size=TINY_JOB["image_size"])
    (target / "data.yaml").unlink()  # uploaded as COCO: annotations.json and images/
    shutil.rmtree(target / "labels")
    target_zip = zip_folder(target, uploads / "real.zip")

    client = NerfsimClient(args.url, os.environ["NERFSIM_SMOKE_KEY"])
    assets = [client.upload_asset(zip_folder(obj.path, uploads / f"{obj.name}.zip"), obj.name, "nerfsim")
              for obj in spec.objects]
    for index, asset in enumerate(assets):
        while asset["status"] == "building":
            wait_until(deadline, f"asset {asset['name']}")
            asset = client.http.get(f"/v1/assets/{asset['id']}").raise_for_status().json()
        if asset["status"] != "ready":
            sys.exit(f"smoke-client: asset {asset['name']} {asset['status']}: {asset.get('error')}")
        assets[index] = asset
    log(f"assets ready: {', '.join(a['name'] for a in assets)}")
    real = client.upload_target(target_zip, "smoke-real", role="both", fmt="coco")

    request = {"assets": [a["id"] for a in assets], "target_val": real["id"], "target_test": real["id"],
               "fov_deg": spec.fov_deg, **TINY_JOB}
    started = time.monotonic()
    job = client.create_job(request)
    log(f"job {job['id']} {job['status']}: {request['budget']}")
    stage = None
    while job["status"] in {"queued", "running"}:
        wait_until(deadline, f"job {job['id']} ({job['status']})")
        job = client.job(job["id"])
        now = (job.get("progress") or {}).get("stage")
        if now != stage:
            log(f"job {job['status']}, stage {now}")
            stage = now
    if job["status"] != "succeeded":
        sys.exit(f"smoke-client: job {job['id']} {job['status']}: {job.get('error')}")
    log(f"job succeeded in {time.monotonic() - started:.0f} s; artifacts: {', '.join(job['artifacts'])}")

    name = "report.json" if "report.json" in job["artifacts"] else next(iter(job["artifacts"]))
    path = client.download(job["id"], name, args.out / name)
    if path.stat().st_size == 0:
        sys.exit(f"smoke-client: artifact {name} is empty")
    client.close()
    if name == "report.json":
        report = json.loads(path.read_text())
        log(f"report: {report.get('iterations_done')} outer iteration(s), {report.get('images_rendered')} images "
            f"rendered, {report.get('seconds')} s")
    log(f"downloaded {name}")


if __name__ == "__main__":
    main()
