#!/usr/bin/env bash
# The main job on the bundled demo scene, on CPU: set up, then run the closed-loop job through
# the embedded service (Redis, worker, API) and print where the dataset, detector and report are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/nerfsim demo --out "${OUT:-out/demo}" "$@"
