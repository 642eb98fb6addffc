#!/usr/bin/env bash
# Instructions per training step, plain nn.Linear and HollowLinear (see callgrind_step.py).
# Usage: bash benchmarks/callgrind.sh [PYTHON] [STEPS]
set -euo pipefail
py=${1:-python}
steps=${2:-200}
here=$(dirname "$0")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for layer in plain hollow; do
    valgrind --tool=callgrind --callgrind-out-file="$out/$layer" --collect-atstart=no \
        --toggle-collect=functools_reduce "$py" "$here/callgrind_step.py" "$layer" \
        --steps "$steps" >/dev/null 2>&1
    total=$(callgrind_annotate "$out/$layer" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p')
    echo "$layer: $((${total//,/} / steps)) instructions per step ($steps steps)"
done
