#!/usr/bin/env bash
# Peak memory of one DenseNet-121 training step on a GPU adapter, burn's concatenating
# dense block with and without burn's balanced gradient checkpointing (what medret trains
# with on a GPU: `medret_train::engine::training_device`), at two batch sizes. On lavapipe
# device memory is host memory, so the process's peak resident set (GNU time's %M) is the
# device's peak; on a real GPU read nvidia-smi's instead.
# Usage: bench/gpu_memory.sh [BATCHES]      (default "16 32")
#   DEVICE=gpu:0 SIZE=224 ARCH=densenet121 FEATURE=gpu-wgsl PROFILE=gpu-check
# One step each, untimed (`--steps 0`): on lavapipe a 224 px DenseNet-121 step at batch
# 16 takes minutes. CUBECL_AUTOTUNE_LEVEL=minimal keeps kernel tuning short.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
[ -n "${XDG_RUNTIME_DIR:-}" ] || { export XDG_RUNTIME_DIR="/tmp/medret-xdg-$(id -u)"; mkdir -p "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"; }
batches=${1:-16 32}
device=${DEVICE:-gpu:0}
size=${SIZE:-224}
arch=${ARCH:-densenet121}
feature=${FEATURE:-gpu-wgsl}
profile=${PROFILE:-gpu-check}
bin=$(cargo bench -q --profile "$profile" -p medret-models --features "$feature" --bench densenet --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "densenet" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "could not build the densenet bench"; exit 1; }
printf '%-8s %-22s %10s %10s\n' batch block "peak GB" "wall s"
for b in $batches; do
    for ck in "" --checkpointing; do
        out=$(mktemp)
        /usr/bin/time -f "%M %e" -o "$out" "$bin" --arch "$arch" --size "$size" --steps 0 \
            --train-batch "$b" --infer-batch 0 --threads "$(nproc)" --device "$device" $ck >/dev/null 2>"$out.err" \
            || { echo "batch $b $ck failed:"; tail -5 "$out.err"; }
        read -r kb secs < <(tail -1 "$out")
        printf '%-8s %-22s %10.2f %10s\n' "$b" "${ck:-concatenating}" "$(echo "$kb / 1000000" | bc -l)" "$secs"
        rm -f "$out" "$out.err"
    done
done
