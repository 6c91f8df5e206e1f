#!/usr/bin/env bash
# One command for the first lent GPU (issue 21; docs/gpu.md): list the adapters, run the
# device parity tests, time a DenseNet-121 training step and inference on the device
# against the CPU (and against PyTorch on the same GPU where it can be imported or
# installed), train each method for a fixed number of steps at full size, and write one
# JSON with every figure. Each part records its own failure and the script goes on, so a
# first run on a new machine says what is missing rather than stopping at it.
#
# Usage: bench/gpu.sh [OUT_JSON]            (default /tmp/medret-gpu/gpu.json)
#   STEPS=20         timed steps per figure, and training steps per method
#   DEVICE=gpu:0     the adapter (`medret devices` order, or part of its name)
#   FEATURE=gpu      gpu (CubeCL's SPIR-V) or gpu-wgsl (WGSL; Mesa 22's lavapipe needs it)
#   PROFILE=release  the cargo profile
#   QUICK=1          the reduced run for a software adapter (lavapipe): the tiny DenseNet
#                    at 64 px and 2 steps instead of DenseNet-121 at 224 px; proves the
#                    script end to end, its timings mean nothing
#
# Budget on a real GPU: the builds are not device time if they are made before the
# machine is lent (`cargo build --release --features gpu -p medret-cli` and the two test
# and bench builds below); the device part is about 7 minutes at STEPS=20.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
out=${1:-/tmp/medret-gpu/gpu.json}
steps=${STEPS:-20}
device=${DEVICE:-gpu:0}
feature=${FEATURE:-gpu}
profile=${PROFILE:-release}
if [ -n "${QUICK:-}" ]; then
    arch=tiny; size=64; steps=${STEPS:-2}; train_arch=densenet-tiny
else
    arch=densenet121; size=224; train_arch=densenet121
fi
work=$(dirname "$out")/work
mkdir -p "$work"
parts="$work/parts.jsonl"
: > "$parts"
# part NAME STATUS DETAIL-JSON: one line per part, assembled at the end.
part() { printf '{"part": "%s", "status": "%s", "detail": %s}\n' "$1" "$2" "${3:-null}" >> "$parts"; echo "== $1: $2"; }
tail_json() { python3 -c 'import json, sys; print(json.dumps(open(sys.argv[1], errors="replace").read()[-3000:]))' "$1"; }

# 1. The Vulkan loader's view: without an ICD (a container without the driver's Vulkan
# files, or without the "graphics" capability on NVIDIA) no adapter can appear.
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
if [ -z "$icds" ]; then
    part vulkan_icd missing '"no Vulkan ICD file in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d: install the driver'"'"'s Vulkan part (NVIDIA: libnvidia-gl, and NVIDIA_DRIVER_CAPABILITIES must include graphics in a container); lavapipe: mesa-vulkan-drivers"'
else
    part vulkan_icd ok "$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1].split()))' "$icds")"
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/nvidia-smi.txt" 2>&1
    part nvidia_smi ok "$(tail_json "$work/nvidia-smi.txt")"
fi
[ -n "${XDG_RUNTIME_DIR:-}" ] || { export XDG_RUNTIME_DIR="/tmp/medret-xdg-$(id -u)"; mkdir -p "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"; }

# 2. Builds.
if cargo build -q --profile "$profile" -p medret-cli --features "$feature" > "$work/build.log" 2>&1; then
    part build ok
else
    part build failed "$(tail_json "$work/build.log")"
    python3 - "$parts" "$out" <<'PY'
import json, sys
json.dump([json.loads(l) for l in open(sys.argv[1]) if l.strip()], open(sys.argv[2], "w"), indent=1)
PY
    echo "build failed: $work/build.log"; exit 1
fi
dir=$profile; [ "$profile" = dev ] && dir=debug
m="$CARGO_TARGET_DIR/$dir/medret"

# 3. Adapters.
if "$m" devices --json > "$work/devices.json" 2> "$work/devices.err"; then
    part devices ok "$(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$work/devices.json")"
else
    part devices failed "$(tail_json "$work/devices.err")"
fi

# 4. Parity with the CPU on the device (MEDRET_REQUIRE_GPU: fail, never skip).
t0=$(date +%s)
if MEDRET_REQUIRE_GPU=1 cargo test -q --profile "$profile" -p medret-models -p medret-train --features "$feature" --test gpu_parity > "$work/parity.log" 2>&1; then
    part parity ok "{\"seconds\": $(( $(date +%s) - t0 )), \"log\": $(tail_json "$work/parity.log")}"
else
    part parity failed "$(tail_json "$work/parity.log")"
fi

# 5. DenseNet step and inference: the device, the CPU, PyTorch on the GPU.
bench() { cargo bench -q --profile "$profile" -p medret-models --features "$feature" --bench densenet -- \
    --arch "$arch" --size "$size" --steps "$steps" --train-batch 16 --infer-batch 64 --threads "$(nproc)" "$@" 2> "$work/bench.err" | tail -1; }
for dev in "$device" cpu; do
    if r=$(bench --device "$dev") && [ -n "$r" ]; then part "densenet_$dev" ok "$r"; else part "densenet_$dev" failed "$(tail_json "$work/bench.err")"; fi
done
py=python3
# Only where a CUDA GPU is present is PyTorch worth its download (gigabytes with CUDA).
if command -v nvidia-smi >/dev/null && ! $py -c "import torch, torchvision" 2>/dev/null; then
    venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
    if [ -x "$venv/bin/python" ] || timeout 300 bash -c "python3 -m venv '$venv' && '$venv/bin/pip' install -q torch torchvision" > "$work/pip.log" 2>&1; then
        py="$venv/bin/python"
    fi
fi
if $py -c "import torch, torchvision; assert torch.cuda.is_available()" 2>/dev/null; then
    if r=$($py bench/densenet_torch.py --arch "$arch" --size "$size" --steps "$steps" --train-batch 16 --infer-batch 64 --device cuda 2> "$work/torch.err" | tail -1) && [ -n "$r" ]; then
        part densenet_pytorch_cuda ok "$r"
    else
        part densenet_pytorch_cuda failed "$(tail_json "$work/torch.err")"
    fi
else
    part densenet_pytorch_cuda skipped '"PyTorch with CUDA could not be imported or installed here (no network, or no CUDA device)"'
fi

# 5b. Peak device memory of one training step at batch 16 and 32, burn's concatenating
# dense block with and without the gradient checkpointing training uses on a GPU
# (bench/gpu_memory.sh: nvidia-smi's memory.used where it exists, else the peak RSS).
if SIZE=$size ARCH=$arch DEVICE=$device FEATURE=$feature PROFILE=$profile \
    bash bench/gpu_memory.sh "16 32" > "$work/memory.txt" 2>&1; then
    part memory ok "$(python3 -c 'import json, sys
rows = [l.split() for l in open(sys.argv[1]) if l[:1].isdigit()]
print(json.dumps([{"batch": int(r[0]), "block": r[1], "peak_gb": float(r[2]), "seconds": r[3], "measure": " ".join(r[4:]).strip("()")} for r in rows]))' "$work/memory.txt")"
else
    part memory failed "$(tail_json "$work/memory.txt")"
fi

# 6. Each method trained for a fixed number of steps on the device (batch 16, one epoch
# of 16 x STEPS phantoms); the time and the loss are in each run's log.
n=$(( 16 * steps ))
"$m" synth cxr --n "$n" --size "$size" --seed 1 --out "$work/cxr" > /dev/null 2>&1
"$m" synth fundus --n "$n" --size "$size" --seed 1 --out "$work/fundus" > /dev/null 2>&1
train() { # name, then the command's arguments
    local name=$1; shift
    local t0 t1
    rm -rf "$work/$name"
    t0=$(date +%s.%N)
    if "$m" "$@" --device "$device" --epochs 1 --batch-size 16 --out "$work/$name" > "$work/$name.log" 2>&1; then
        t1=$(date +%s.%N)
        part "train_$name" ok "{\"seconds\": $(python3 -c "print(round($t1 - $t0, 1))"), \"images\": $n, \"arch\": \"$train_arch\", \"size\": $size}"
    else
        part "train_$name" failed "$(tail_json "$work/$name.log")"
    fi
}
train c2l pretrain c2l --data "$work/cxr" --arch "$train_arch" --size "$size"
train fusion_hash train hash --data "$work/cxr" --arch "$train_arch" --size "$size" --bits 48
train mirror_fine_triplet train metric --data "$work/fundus" --arch "$train_arch" --size "$size" --attention mirror --loss fine-triplet

python3 - "$parts" "$out" "$device" "$feature" "$profile" "$steps" <<'PY'
import json, sys, platform, datetime
text, parts, dec, i = open(sys.argv[1]).read(), [], json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i == len(text):
        break
    p, i = dec.raw_decode(text, i)
    parts.append(p)
doc = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "host": platform.node(), "device": sys.argv[3], "feature": sys.argv[4],
       "profile": sys.argv[5], "steps": int(sys.argv[6]),
       "parts": {p["part"]: {"status": p["status"], "detail": p["detail"]} for p in parts}}
by = doc["parts"]
gpu = by.get("densenet_" + sys.argv[3], {}).get("detail")
cpu = by.get("densenet_cpu", {}).get("detail")
torch = by.get("densenet_pytorch_cuda", {}).get("detail")
if isinstance(gpu, dict) and isinstance(cpu, dict):
    doc["train_step_cpu_over_device"] = round(cpu["train_step_ms"] / gpu["train_step_ms"], 2)
    doc["inference_device_over_cpu"] = round(gpu["infer_img_per_s"] / cpu["infer_img_per_s"], 2)
if isinstance(gpu, dict) and isinstance(torch, dict):
    doc["train_step_medret_over_pytorch"] = round(gpu["train_step_ms"] / torch["train_step_ms"], 2)
    doc["inference_pytorch_over_medret"] = round(torch["infer_img_per_s"] / gpu["infer_img_per_s"], 2)
json.dump(doc, open(sys.argv[2], "w"), indent=1)
failed = [k for k, v in by.items() if v["status"] == "failed"]
print(f"wrote {sys.argv[2]}; failed parts: {', '.join(failed) or 'none'}")
sys.exit(1 if failed else 0)
PY
