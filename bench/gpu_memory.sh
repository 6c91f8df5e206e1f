#!/usr/bin/env bash
# Peak memory of one DenseNet-121 training step on a GPU adapter, burn's concatenating
# dense block with and without burn's balanced gradient checkpointing (what medret trains
# with on a GPU: `medret_train::engine::training_device`), at two batch sizes. On lavapipe
# device memory is host memory, so the process's peak resident set (GNU time's %M) is the
# device's peak. Where nvidia-smi exists, its largest memory.used during the run (sampled
# every 100 ms, less the figure before the run) is printed as the device's peak instead.
# Usage: bench/gpu_memory.sh [BATCHES]      (default "16 32")
#   DEVICE=gpu:0 SIZE=224 ARCH=densenet121 FEATURE=gpu-wgsl PROFILE=gpu-check
#   BLOCKS="concatenating checkpointing"     (either or both)
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
smi=$(command -v nvidia-smi || true)
used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
printf '%-8s %-22s %10s %10s %s\n' batch block "peak GB" "wall s" "(what)"
for b in $batches; do
    for block in ${BLOCKS:-concatenating checkpointing}; do
        ck=; [ "$block" = checkpointing ] && ck=--checkpointing
        out=$(mktemp)
        if [ -n "$smi" ]; then
            base=$(used_mib)
            ( while :; do used_mib; sleep 0.1; done ) > "$out.smi" 2>/dev/null &
            poll=$!
        fi
        /usr/bin/time -f "%M %e" -o "$out" "$bin" --arch "$arch" --size "$size" --steps 0 \
            --train-batch "$b" --infer-batch 0 --threads "$(nproc)" --device "$device" $ck >/dev/null 2>"$out.err" \
            || { echo "batch $b $ck failed:"; tail -5 "$out.err"; }
        read -r kb secs < <(tail -1 "$out")
        if [ -n "$smi" ]; then
            kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null || true
            peak=$(sort -n "$out.smi" | tail -1)
            gb=$(echo "($peak - $base) / 1024" | bc -l); what="nvidia-smi memory.used"
        else
            gb=$(echo "$kb / 1000000" | bc -l); what="peak resident set"
        fi
        printf '%-8s %-22s %10.2f %10s %s\n' "$b" "$block" "$gb" "$secs" "($what)"
        rm -f "$out" "$out.err" "$out.smi"
    done
done
