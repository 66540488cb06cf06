#!/usr/bin/env bash
# The main job on the bundled demo scene, on CPU: set up, then render a labelled dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/nerfsim render --scene demo --num "${NUM:-64}" --size "${SIZE:-128}" --out "${OUT:-out/demo}"
