#!/usr/bin/env bash
# The whole test suite (slow tests included): set up, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Single-threaded math: on a shared 2-core machine busy-waiting OpenMP threads made training
# steps 30x slower.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
