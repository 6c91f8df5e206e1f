#!/usr/bin/env bash
# Peak memory (maximum resident set, GNU time's %M) of one DenseNet-121 training step at
# 224 px and batch 16 plus inference at batch 16, whole process: burn with medret's CPU
# kernels, burn without them (MEDRET_KERNELS=off), and PyTorch, in one run.
# Usage: bench/peak_memory.sh [THREADS]     (PyTorch from bench/densenet.sh's venv)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
threads=${1:-2}
profile=${PROFILE:-bench}
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
args="--arch densenet121 --size 224 --steps 1 --train-batch 16 --infer-batch 16 --threads $threads"
cargo bench -q --profile "$profile" -p medret-models --bench densenet --no-run >/dev/null 2>&1
peak() { # label, command...
    local label=$1; shift
    local out kb
    out=$(mktemp)
    /usr/bin/time -f "%M" -o "$out" "$@" >/dev/null 2>&1
    kb=$(tail -1 "$out")
    rm -f "$out"
    printf '%-22s %6.2f GB\n' "$label" "$(echo "$kb / 1000000" | bc -l)"
}
# Through cargo, GNU time reports the largest process of the tree: the bench binary.
peak "burn, kernels on" cargo bench -q --profile "$profile" -p medret-models --bench densenet -- $args
peak "burn, kernels off" env MEDRET_KERNELS=off cargo bench -q --profile "$profile" -p medret-models --bench densenet -- $args
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch" 2>/dev/null; then
    peak "PyTorch" "$venv/bin/python" bench/densenet_torch.py $args
else
    echo "PyTorch: no venv at $venv (bench/densenet.sh makes one)"
fi
