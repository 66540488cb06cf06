#!/usr/bin/env bash
# One GPU per worker container. `docker compose up --scale worker=N` gives every replica the
# same GPU reservation (compose cannot hand out devices per replica), so each worker sees all
# GPUs and claims one here: it takes an exclusive lock on $NERFSIM_GPU_LOCK_DIR/gpu<i>.lock (a
# volume shared by the workers of one host) and runs with CUDA_VISIBLE_DEVICES=<i>. The lock's
# descriptor stays open in the worker, so the GPU is released when the worker exits, however it
# exits. Kubernetes (nvidia.com/gpu: 1) and a preset CUDA_VISIBLE_DEVICES skip the claim.
set -euo pipefail

if [ -z "${NERFSIM_GPU_LOCK_DIR:-}" ] || [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    exec "$@"
fi
gpus=${NERFSIM_GPU_COUNT:-$(nvidia-smi --list-gpus | grep -c '^GPU ' || true)}
if [ "$gpus" -lt 1 ]; then
    echo "nerfsim worker: no GPU visible (nvidia-smi --list-gpus found none); is the NVIDIA container toolkit set up?" >&2
    exit 1
fi
for ((index = 0; index < gpus; index++)); do
    exec {lock}>"$NERFSIM_GPU_LOCK_DIR/gpu$index.lock"
    if flock --nonblock "$lock"; then
        export CUDA_VISIBLE_DEVICES=$index
        echo "nerfsim worker: using GPU $index of $gpus" >&2
        exec "$@"
    fi
    exec {lock}>&-
done
echo "nerfsim worker: all $gpus GPUs are taken by other workers; scale the workers to at most $gpus" >&2
exit 1
