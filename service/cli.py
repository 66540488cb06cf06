"""The ``nerfsim`` command line.

    nerfsim asset from-mesh MESH --out DIR     posed image set from a textured mesh
    nerfsim asset train DIR --out ASSET [--representation splat]
                                               object NeRF (or splat) from a posed image set
    nerfsim asset bake NERF --out ASSET        splat baked from a NeRF asset (or config.yml)
    nerfsim asset import-splat PLY --out ASSET splat asset from a 3DGS / nerfstudio .ply
    nerfsim render --scene demo --num N --size S|WxH --out DIR
                                               labelled dataset (COCO + YOLO + card)
    nerfsim optimize --config JOB.json --out DIR [--storage DIR --tenant T] [--preset NAME]
                                               run a job (a JobSpec, as POST /v1/jobs takes) here
                                               (resumes from DIR)
    nerfsim presets                            the method presets a job can name
    nerfsim demo [--out DIR]                   the main job on the demo scene, through the service
    nerfsim download JOB ARTIFACT [--out PATH] a finished job's artifact from a service (through the SDK)
    nerfsim serve [--port 8000] [--workers 1]  API + workers (+ embedded Redis without REDIS_URL)
    nerfsim worker                             a worker of a deployment's Redis (REDIS_URL)
    nerfsim keys create|list|revoke            API keys (each names a tenant)

Heavy libraries are imported inside the commands, so ``nerfsim --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from service.environment import offline_environment


def image_size_arg(text: str) -> int | tuple[int, int]:
    """``--size``: S (S x S squares) or WxH (the photos' aspect; the field of view spans the
    longer side, renderer.camera) as render_dataset takes it."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise argparse.ArgumentTypeError(f"--size: expected S or WxH in pixels (e.g. 128 or 640x480), got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[1], parts[0])


def cmd_asset_from_mesh(args: argparse.Namespace) -> None:
    from renderer.mesh import build_posed_image_set

    path = build_posed_image_set(
        args.mesh, args.out, num_views=args.views, num_test_views=args.test_views, size=args.size,
        fov_deg=args.fov, spp=args.spp, seed=args.seed, progress=True,
    )
    print(f"posed image set: {path}")


def cmd_asset_train(args: argparse.Namespace) -> None:
    from service.assets import train_asset, train_splat_asset

    name = args.name or Path(args.dir).resolve().name
    train = train_splat_asset if args.representation == "splat" else train_asset
    stats = train(args.dir, args.out, name, steps=args.steps, minutes=args.minutes, seed=args.seed)
    print(json.dumps({"asset": str(args.out), **stats}, indent=2))


def cmd_asset_bake(args: argparse.Namespace) -> None:
    from service.assets import bake_splat_asset

    name = args.name or Path(args.nerf).resolve().name
    stats = bake_splat_asset(args.nerf, args.out, name, views=args.views, view_size=args.size, steps=args.steps,
                             minutes=args.minutes, seed=args.seed)
    print(json.dumps({"asset": str(args.out), **stats}, indent=2))


def cmd_asset_import_splat(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from renderer.splat_asset import import_splat

    meta = import_splat(args.ply, args.name or args.ply.stem, args.out, up_axis=args.up_axis, scale=args.scale)
    print(json.dumps({"asset": str(args.out), **asdict(meta)}, indent=2))


def cmd_render(args: argparse.Namespace) -> None:
    import torch

    from optimizer.dataset import render_dataset
    from optimizer.psi import Psi, PsiConfig
    from renderer.scene_spec import read_scene_spec, scene_renderer

    torch.set_num_threads(args.threads)
    spec = read_scene_spec(args.scene)
    renderer = scene_renderer(spec)
    psi = Psi.uniform(
        PsiConfig(
            num_classes=len(renderer.fields),
            max_objects=args.max_objects,
            num_backgrounds=len(renderer.backgrounds),
            elevation_range_deg=(-20.0, 70.0),
            distance_median=args.distance,
        )
    )
    out = render_dataset(renderer, psi, args.num, args.size, Path(args.out), spec.class_names, seed=args.seed)
    print(f"dataset: {out} ({args.num} images; images/, annotations.json, labels/, data.yaml, card.md)")


def cmd_optimize(args: argparse.Namespace) -> None:
    from nerfsim_client.spec import JobSpec

    from optimizer.loop import run_optimization
    from service.job_config import loop_config, resolve, stored_records
    from service.progress_view import StageProgress
    from service.storage import Storage

    try:
        data = json.loads(Path(args.config).read_text())
    except FileNotFoundError as error:
        raise ValueError(f"{args.config}: job file not found") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{args.config}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{args.config}: a job file is a JSON object: a JobSpec, as POST /v1/jobs takes")
    if args.preset is not None:
        data["preset"] = args.preset
    elif data.get("preset") is None and (started := _started_preset(Path(args.out))):
        data["preset"] = started
        print(f"{args.out}: the run there started with preset {started}; it goes on with it", file=sys.stderr)
    try:
        spec = JobSpec.model_validate(data)
        records = stored_records(Storage(_service_settings(args).storage_root), args.tenant)
        config = loop_config(spec, resolve(spec, records, base=args.config.parent), name=args.config.stem)
    except (TypeError, ValueError) as error:  # (pydantic's ValidationError is a ValueError)
        raise ValueError(f"{args.config}: {error}") from error
    print(f"preset {config.preset}: method {config.outer.method}, estimator {config.outer.estimator}", file=sys.stderr)
    view = StageProgress()  # one bar per stage (the loop's own bars and Ultralytics' logs stay off)
    try:
        run_optimization(config, Path(args.out), on_progress=lambda p: view.progress(p.to_dict()), progress_bar=False)
    finally:
        view.close()
    print(f"results: {args.out} (dataset/, psi.json, detector.pt, best_loop_detector.pt, report.json)")


def _started_preset(out: Path) -> str | None:
    """The preset of the run already in ``out`` (the loop's config.json), if any: resuming it
    after an upgrade that changed the default preset runs the method it started with."""
    try:
        preset = json.loads((out / "config.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):  # none yet (or not the loop's)
        return None
    return preset if isinstance(preset, str) else None


def cmd_presets(args: argparse.Namespace) -> None:
    from optimizer.presets import DEFAULT_PRESET, PRESETS

    for preset in PRESETS.values():
        default = " (default)" if preset.name == DEFAULT_PRESET else ""
        print(f"{preset.name}{default}: {preset.description}\n    {json.dumps(dict(preset.settings))}")


def _service_settings(args: argparse.Namespace):
    from service.settings import ServiceSettings

    settings = ServiceSettings()
    if getattr(args, "storage", None):
        settings.storage_root = Path(args.storage)
    return settings


def _raise_system_exit(signum, frame) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.main import create_app
    from service.embedded import EmbeddedService
    from service.logs import configure_logging

    settings = _service_settings(args)
    configure_logging(settings.log_json)
    # uvicorn re-raises the signal that stopped it; as an exception (not the default handler,
    # which would end the process at once) it lets the workers and Redis below shut down too.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    with EmbeddedService(settings, workers=args.workers) as service:
        print(f"nerfsim: API on http://{args.host}:{args.port} (docs at /docs), Redis {service.settings.redis_url}, "
              f"storage {service.settings.storage_root.resolve()}, {args.workers} worker(s)", file=sys.stderr)
        uvicorn.run(create_app(service.settings), host=args.host, port=args.port, log_config=None)


def cmd_worker(args: argparse.Namespace) -> None:
    from service.worker import run_worker

    run_worker(_service_settings(args), burst=args.burst, max_jobs=args.max_jobs, name=args.name)


def cmd_demo(args: argparse.Namespace) -> None:
    from service.demo import run_demo

    run_demo(Path(args.out), _service_settings(args), quick=args.quick)


def cmd_download(args: argparse.Namespace) -> None:
    from nerfsim_client import Client, NerfsimError

    try:
        with Client(args.url, args.api_key, progress=sys.stderr.isatty()) as client:
            path = client.get_job(args.job).download(args.artifact, args.out)
    except NerfsimError as error:  # (the SDK's errors are not ValueErrors: main reports them the same way)
        raise ValueError(f"{args.job}: {error}") from error
    print(path)


def _key_store(args: argparse.Namespace):
    import redis

    from service.embedded import discover_redis_url
    from service.keys import KeyStore
    from service.storage import Storage

    settings = _service_settings(args)
    url = discover_redis_url(settings)
    return KeyStore(redis.Redis.from_url(url) if url else None, Storage(settings.storage_root))


def cmd_keys_create(args: argparse.Namespace) -> None:
    key, record = _key_store(args).create(args.tenant, args.name or "")
    print(f"API key for tenant {record.tenant} (shown once; id {record.key_id}):\n{key}")


def cmd_keys_list(args: argparse.Namespace) -> None:
    for record in _key_store(args).list():
        state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
        print(f"{record.key_id}  tenant={record.tenant}  name={record.name or '-'}  "
              f"created={record.created_at:%Y-%m-%d %H:%M}  {state}")


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    record = _key_store(args).revoke(args.key_id)
    print(f"revoked {record.key_id} (tenant {record.tenant})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerfsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    asset = commands.add_parser("asset", help="build object assets").add_subparsers(dest="asset_command", required=True)
    from_mesh = asset.add_parser("from-mesh", help="render a textured mesh (OBJ+MTL+texture) into a posed image set")
    from_mesh.add_argument("mesh", type=Path)
    from_mesh.add_argument("--out", type=Path, required=True)
    from_mesh.add_argument("--views", type=int, default=100, help="training views")
    from_mesh.add_argument("--test-views", type=int, default=10, help="held-out views")
    from_mesh.add_argument("--size", type=int, default=128)
    from_mesh.add_argument("--fov", type=float, default=40.0)
    from_mesh.add_argument("--spp", type=int, default=64)
    from_mesh.add_argument("--seed", type=int, default=0)
    from_mesh.set_defaults(run=cmd_asset_from_mesh)

    train = asset.add_parser("train", help="train an object NeRF from a posed image set (transforms.json)")
    train.add_argument("dir", type=Path)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--name", help="class name (default: the folder name)")
    train.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    train.add_argument("--steps", type=int, default=5000, help="at most this many steps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--representation", choices=["nerf", "splat"], default="nerf",
                       help="train an object NeRF (default) or a 3D Gaussian splat")
    train.set_defaults(run=cmd_asset_train)

    bake = asset.add_parser("bake", help="bake a NeRF (nerfsim asset folder or nerfstudio config.yml) into a splat")
    bake.add_argument("nerf", type=Path)
    bake.add_argument("--out", type=Path, required=True)
    bake.add_argument("--name", help="class name (default: the NeRF's folder name)")
    bake.add_argument("--views", type=int, default=100, help="renders of the NeRF the splat is fitted to")
    bake.add_argument("--size", type=int, default=128, help="side of the renders, pixels")
    bake.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    bake.add_argument("--steps", type=int, default=3000, help="at most this many steps")
    bake.add_argument("--seed", type=int, default=0)
    bake.set_defaults(run=cmd_asset_bake)

    splat = asset.add_parser("import-splat", help="a 3DGS / nerfstudio splat .ply as a splat asset (object frame)")
    splat.add_argument("ply", type=Path)
    splat.add_argument("--out", type=Path, required=True)
    splat.add_argument("--name", help="class name (default: the file's name)")
    splat.add_argument("--up-axis", choices=["y", "z"], help="the file's up axis (default: its 'Vertical Axis' "
                                                            "comment, else y)")
    splat.add_argument("--scale", type=float, default=1.0, help="metres per file unit")
    splat.set_defaults(run=cmd_asset_import_splat)

    render = commands.add_parser("render", help="render a labelled dataset of a scene")
    render.add_argument("--scene", default="demo", help="'demo' or a scene.json")
    render.add_argument("--num", type=int, default=100)
    render.add_argument("--size", type=image_size_arg, default=128, help="S or WxH pixels (default 128)")
    render.add_argument("--out", type=Path, required=True)
    render.add_argument("--max-objects", type=int, default=3)
    render.add_argument("--distance", type=float, default=0.6, help="median object distance, metres")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    render.set_defaults(run=cmd_render)

    optimize = commands.add_parser("optimize", help="run a closed-loop job here, with a progress bar")
    optimize.add_argument("--config", type=Path, required=True,
                          help="the job: a JobSpec as JSON (a POST /v1/jobs body); its references are paths "
                               "(relative to the file) or record ids in --storage for --tenant")
    optimize.add_argument("--out", type=Path, required=True, help="job folder (resumed if it has a checkpoint)")
    optimize.add_argument("--storage", type=Path, help="service storage root the record ids are found in "
                                                       "(default: $NERFSIM_STORAGE_ROOT or ./nerfsim-data)")
    optimize.add_argument("--tenant", help="the tenant whose records the ids name")
    optimize.add_argument("--preset", help="method preset (nerfsim presets lists them; default: the config's, "
                                           "else the default preset); the config's explicit settings win over it")
    optimize.set_defaults(run=cmd_optimize)

    presets = commands.add_parser("presets", help="list the method presets a job can name")
    presets.set_defaults(run=cmd_presets)

    storage_help = "storage root (default: $NERFSIM_STORAGE_ROOT or ./nerfsim-data)"
    serve = commands.add_parser("serve", help="run the API and workers (an embedded Redis when REDIS_URL is unset)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--storage", type=Path, help=storage_help)
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="take jobs from the queue at REDIS_URL")
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    worker.add_argument("--max-jobs", type=int, help="stop after this many jobs")
    worker.add_argument("--name", help="worker name (default: host.pid.random)")
    worker.add_argument("--storage", type=Path, help=storage_help)
    worker.set_defaults(run=cmd_worker)

    demo = commands.add_parser("demo", help="the main job on the bundled demo scene, through the embedded service")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="where the results are written")
    demo.add_argument("--quick", action="store_true", help="a smaller budget (a minute or two)")
    demo.add_argument("--storage", type=Path, help="service storage root (default: OUT/service)")
    demo.set_defaults(run=cmd_demo)

    download = commands.add_parser("download", help="download a job's artifact from a service")
    download.add_argument("job", help="job id")
    download.add_argument("artifact", help="dataset, detector, best_loop_detector, report, psi, config, samples, plots "
                                           "(or the file name)")
    download.add_argument("--out", type=Path, default=Path("."), help="a file, or a folder to put it in")
    download.add_argument("--url", default=os.environ.get("NERFSIM_URL", "http://127.0.0.1:8000"),
                          help="the service (default: $NERFSIM_URL or http://127.0.0.1:8000)")
    download.add_argument("--api-key", help="API key (default: $NERFSIM_API_KEY)")
    download.set_defaults(run=cmd_download)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", help="tenant of the key (default: a new tenant)")
    create.add_argument("--name", help="a note on what the key is for")
    create.add_argument("--storage", type=Path, help=storage_help)
    create.set_defaults(run=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--storage", type=Path, help=storage_help)
    listing.set_defaults(run=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.add_argument("--storage", type=Path, help=storage_help)
    revoke.set_defaults(run=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    offline_environment()  # before any command imports torch or Ultralytics
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:  # every input error of nerfsim is a ValueError subclass naming the file
        print(f"nerfsim: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
