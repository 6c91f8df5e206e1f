#!/usr/bin/env bash
# Where a DenseNet training step's time goes: each dense-layer operation alone, burn-flex
# vs PyTorch, same shapes (DenseNet-121 block 1 at 128 px, batch 8), same threads, same
# run. Every row is a minimal reproduction of one cost.
# Usage: bench/densenet_ops.sh [THREADS] [REPS]     (PyTorch goes into a scratch venv)
# Built in the bench profile, as bench/densenet.sh is: the dev profile optimises the
# dependencies too but keeps their debug assertions and overflow checks, which made
# burn's and gemm's rows up to three times slower (PROFILE=dev to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
# One shared build directory, as .ci/run uses (a cold burn build costs ten minutes).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
threads=${1:-2}
reps=${2:-5}
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch
fi
profile=${PROFILE:-bench}
burn=$(cargo run -q --profile "$profile" -p medret-models --example densenet_ops -- --threads "$threads" --reps "$reps")
torch=$("$venv/bin/python" bench/densenet_ops_torch.py --threads "$threads" --reps "$reps")
echo "$burn"
echo "$torch"
python3 - "$burn" "$torch" <<'PY'
import json, sys
b = {r["op"]: r for r in map(json.loads, sys.argv[1].splitlines())}
t = {r["op"]: r for r in map(json.loads, sys.argv[2].splitlines())}
print(f"{'operation':32} {'forward burn/torch':>20} {'backward burn/torch':>21}   (ms; both record the graph)")
for op in b:
    fb, ft = b[op]["forward_ms"], t[op]["forward_ms"]
    bb, bt = b[op]["backward_ms"], t[op]["backward_ms"]
    print(f"{op:32} {fb:7.1f}/{ft:6.1f} {fb/ft:4.1f}x {bb:8.1f}/{bt:6.1f} {bb/bt:4.1f}x")
PY
