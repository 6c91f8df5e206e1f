#!/usr/bin/env bash
# DenseNet-121 (224 px) and the small configuration: one training step at batch 16 and
# inference at batch 64, burn-flex vs PyTorch, same machine, same run, same threads;
# medians over the timed steps.
# burn runs three times: with medret's CPU kernels (crates/models/src/kernels) and without
# (MEDRET_KERNELS=off, burn's own ops), so the kernels' gain is measured in the same run;
# and with the kernels but without Winograd (MEDRET_WINOGRAD=off: the 3x3s as im2col).
# Usage: bench/densenet.sh [THREADS] [STEPS]     (PyTorch goes into a scratch venv)
#        PROFILE=dev bench/densenet.sh            (skip the release build: dependencies and
#                                                  medret-models are optimised in dev too)
set -euo pipefail
cd "$(dirname "$0")/.."
# One shared build directory, as .ci/run uses (a cold burn build costs ten minutes).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
threads=${1:-2}
steps=${2:-3}
profile=${PROFILE:-bench}
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch torchvision
fi
cargo bench -q --profile "$profile" -p medret-models --bench densenet --no-run >/dev/null 2>&1 \
    || cargo bench --profile "$profile" -p medret-models --bench densenet --no-run
# The small configuration's steps take milliseconds: ten times as many of them, so that
# the medians hold still on a shared machine.
for cfg in "--arch tiny --size 64 --steps $((steps * 10))" "--arch densenet121 --size 224 --steps $steps"; do
    common="$cfg --train-batch 16 --infer-batch 64 --threads $threads"
    plain=$(MEDRET_KERNELS=off cargo bench -q --profile "$profile" -p medret-models --bench densenet -- $common | tail -1)
    direct=$(MEDRET_WINOGRAD=off cargo bench -q --profile "$profile" -p medret-models --bench densenet -- $common | tail -1)
    burn=$(cargo bench -q --profile "$profile" -p medret-models --bench densenet -- $common | tail -1)
    torch=$("$venv/bin/python" bench/densenet_torch.py $common | tail -1)
    echo "burn, kernels off: $plain"
    echo "burn, kernels on, Winograd off: $direct"
    echo "burn, kernels on:  $burn"
    echo "$torch"
    python3 - "$plain" "$burn" "$torch" "$direct" <<'PY'
import json, sys
p, b, t, d = (json.loads(a) for a in sys.argv[1:5])
print(f"  {b['arch']} {b['size']}px, {b['threads']} threads: train step burn/torch = "
      f"{b['train_step_ms'] / t['train_step_ms']:.2f}x the time (kernels off: "
      f"{p['train_step_ms'] / t['train_step_ms']:.2f}x); inference torch/burn = "
      f"{t['infer_img_per_s'] / b['infer_img_per_s']:.2f}x the throughput (kernels off: "
      f"{t['infer_img_per_s'] / p['infer_img_per_s']:.2f}x)")
print(f"  Winograd off: train step {d['train_step_ms'] / t['train_step_ms']:.2f}x the time; "
      f"inference torch/burn {t['infer_img_per_s'] / d['infer_img_per_s']:.2f}x")
PY
done
