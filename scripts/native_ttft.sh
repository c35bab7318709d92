#!/usr/bin/env bash
# Receiver time to first token of the native interlingua at every pool_window of a native sweep, against the
# whole text prompt (benchmarks/receiver_ttft.py, one JSON per window): the sweep's `ttft:` folder.
#
#   bash scripts/native_ttft.sh [OUT] [KEY=VALUE overrides]
#   e.g. bash scripts/native_ttft.sh results/native-compression/ttft data.source=../shared/data/squad
#
# WINDOWS="1 2 4 8 16" (default) names the windows; CONFIG=native the run config; EXAMPLES=32 the examples.
# The learned modules are the fitted bridge at step 0: the receiver's cost does not depend on their training.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/native-ttft}
shift $(( $# < 1 ? $# : 1 ))
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
for k in ${WINDOWS:-1 2 4 8 16}; do
  [ -f "$OUT/k$k.json" ] && { echo "k=$k: measured earlier ($OUT/k$k.json)"; continue; }
  "$PYTHON" benchmarks/receiver_ttft.py --config "${CONFIG:-native}" --examples "${EXAMPLES:-32}" \
    --json "$OUT/k$k.json.partial" "interlingua.pool_window=$k" "$@"
  mv "$OUT/k$k.json.partial" "$OUT/k$k.json"
done
