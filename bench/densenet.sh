#!/usr/bin/env bash
# DenseNet-121 (224 px) and the small configuration: one training step at batch 16 and
# inference at batch 64, burn-flex vs PyTorch, same machine, same run, same threads.
# Usage: bench/densenet.sh [THREADS] [STEPS]     (PyTorch goes into a scratch venv)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
steps=${2:-3}
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch torchvision
fi
cargo bench -q -p medret-models --bench densenet --no-run >/dev/null 2>&1 || cargo bench -p medret-models --bench densenet --no-run
results=()
for cfg in "--arch tiny --size 64" "--arch densenet121 --size 224"; do
    common="$cfg --train-batch 16 --infer-batch 64 --steps $steps --threads $threads"
    burn=$(cargo bench -q -p medret-models --bench densenet -- $common | tail -1)
    torch=$("$venv/bin/python" bench/densenet_torch.py $common | tail -1)
    echo "$burn"
    echo "$torch"
    python3 - "$burn" "$torch" <<'PY'
import json, sys
b, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  {b['arch']} {b['size']}px, {b['threads']} threads: train step burn/torch = "
      f"{b['train_step_ms'] / t['train_step_ms']:.2f}x the time; inference torch/burn = "
      f"{t['infer_img_per_s'] / b['infer_img_per_s']:.2f}x the throughput")
PY
done
