#!/usr/bin/env bash
# GPU check: on a CUDA machine, from a fresh copy of the repository (its .venv carried along, or
# PYTHON pointing at an interpreter with nerfsim's dependencies), check CUDA and the CUDA-only
# packages, then run the render, detector, loop-cost and (if present) splat benchmarks on the
# GPU and print their key=value lines. Each benchmark has its own time limit; all of them
# together stay under 8 minutes (BUDGET_S, 480 s unless set). Exit status: 0 when every benchmark printed its
# line, 1 when one failed or ran out of time, 2 when there is no CUDA device (or no torch).
# ALLOW_CPU=1 runs the benchmarks anyway, on the CPU (to check this script on a CPU machine:
# slow, and over the budget there).
#
#     bash benchmarks/gpu_check.sh            # from the repository root
#     OUT=/some/folder bash benchmarks/gpu_check.sh   # also keeps every benchmark's full log there
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$LOGS/yolo" OMP_WAIT_POLICY=PASSIVE
BUDGET_S=${BUDGET_S:-480}
started=$(date +%s)

# CUDA first: without it nothing below measures a GPU.
if ! "$PYTHON" - <<'EOF'
import importlib, os, sys
import torch
if not torch.cuda.is_available():
    print(f"cuda=none torch={torch.__version__} (torch.version.cuda={torch.version.cuda}): no CUDA device")
    sys.exit(0 if os.environ.get("ALLOW_CPU") == "1" else 2)
print(f"cuda={torch.version.cuda} torch={torch.__version__} device={torch.cuda.get_device_name(0).replace(' ', '_')} "
      f"gpus={torch.cuda.device_count()}")
for module in ("tinycudann", "gsplat"):
    try:
        importlib.import_module(module)
        print(f"{module}=importable")
    except ImportError as error:  # the benchmarks then take the pure-torch fallback
        print(f"{module}=missing ({str(error).splitlines()[0]}): its fallback runs")
EOF
then
    exit 2
fi

failed=0
# run NAME LIMIT_S COMMAND...: run one benchmark with a time limit (never past the budget) and
# print its last line, which is its key=value summary.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - started)))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -le 10 ]; then
        echo "$name: skipped (the ${BUDGET_S} s budget is spent)"
        failed=1
        return
    fi
    local began=$(date +%s)
    timeout --kill-after=10 "$limit" "$PYTHON" "$@" >"$LOGS/$name.log" 2>&1
    local status=$?
    local took=$(($(date +%s) - began))
    if [ $status -eq 0 ]; then
        echo "$name ($took s): $(tail -n 1 "$LOGS/$name.log")"
    else
        echo "$name: FAILED (exit $status after $took s; 124 is the time limit) -- last lines of $LOGS/$name.log:"
        tail -n 5 "$LOGS/$name.log" | sed 's/^/    /'
        failed=1
    fi
}

run render 90 benchmarks/render.py --quick --device auto
run detector 100 benchmarks/detector.py --quick --arch yolov8n
run loop_cost 180 benchmarks/loop_cost.py --quick
if [ -f benchmarks/splat.py ]; then
    run splat 90 benchmarks/splat.py --quick
fi
echo "gpu_check: $(($(date +%s) - started)) s in all, logs in $LOGS"
exit $failed
