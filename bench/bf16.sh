#!/usr/bin/env bash
# bf16 encoding (`--precision bf16`, crates/models/src/kernels/bf16.rs) against f32:
#
# 1. On the shared real sets (../shared/data), a model per set trained as bench/real.sh
#    trains it (`--preset cpu`, seed 0; f32 training), then
#    - the codes of every image, `encode` at f32 and at bf16: the share of bits that agree
#      (the fundus model gives float descriptors: their cosine between f32 and bf16);
#    - `eval` (train split the database, test split the queries) at f32 and at bf16:
#      mAP over the whole ranking and mAP@10, with the chance and majority levels.
# 2. DenseNet-121 at 224 px, batch 16 inference, f32 and bf16, against PyTorch at f32
#    and under bf16 autocast, same threads (crates/models/benches/densenet.rs,
#    bench/densenet_torch.py).
#
# Usage: bench/bf16.sh [OUT_DIR] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}}"
out=${1:-/tmp/medret-bf16}
threads=${2:-2}
shared=../shared/data
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
mkdir -p "$out"
cargo build -q --release -p medret-cli
m="$CARGO_TARGET_DIR/release/medret"

for set in chest_xray chest_xray_nih64 fundus_idrid; do
    [ -d "$shared/$set" ] || { echo "$set: not in $shared, skipped"; continue; }
    dir="$out/$set"
    if [ ! -f "$dir/model.json" ]; then
        case $set in
            chest_xray) "$m" train hash --preset cpu --loss classify --data "$shared/$set" --size 96 --seed 0 --out "$dir" ;;
            chest_xray_nih64) "$m" train hash --preset cpu --loss classify --data "$shared/$set" --size 64 --seed 0 --out "$dir" ;;
            fundus_idrid) "$m" train metric --preset cpu --data "$shared/$set" --attention mirror --loss fine-triplet --seed 0 --out "$dir" ;;
        esac > "$out/$set.train.log" 2>&1
    fi
    for p in f32 bf16; do
        "$m" encode --model "$dir" --data "$shared/$set" --out "$out/$set.$p.npy" --ids-out "$out/$set.$p.csv" --precision "$p" > /dev/null 2>&1
        "$m" eval --model "$dir" --data "$shared/$set" -k 10 --precision "$p" --out "$dir/eval-$p" > "$out/$set.eval-$p.log" 2>&1
    done
    python3 - "$out" "$set" <<'PY'
import json, struct, sys
out, name = sys.argv[1:3]

def npy(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + n].decode()
    body = raw[10 + n:]
    shape = eval(header)["shape"]
    if "'<f4'" in header:
        vals = struct.unpack(f"<{len(body) // 4}f", body)
    else:
        vals = body
    width = shape[1]
    return [vals[i * width:(i + 1) * width] for i in range(shape[0])]

a, b = npy(f"{out}/{name}.f32.npy"), npy(f"{out}/{name}.bf16.npy")
if isinstance(a[0], bytes):
    bits = sum(8 * len(r) for r in a)
    differ = sum(bin(x ^ y).count("1") for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    agree = f"codes: {bits - differ} of {bits} bits agree ({100 * (1 - differ / bits):.3f}%)"
else:
    def cos(u, v):
        d = sum(x * y for x, y in zip(u, v))
        return d / ((sum(x * x for x in u) * sum(y * y for y in v)) ** 0.5)
    cs = [cos(u, v) for u, v in zip(a, b)]
    agree = f"descriptors: cosine f32/bf16 mean {sum(cs) / len(cs):.6f}, least {min(cs):.6f}"
line = [f"{name}: {len(a)} images; {agree}"]
for p in ("f32", "bf16"):
    s = json.load(open(f"{out}/{name}/eval-{p}/report.json"))["scores"]
    line.append(f"  {p}: mAP {s['map_all']:.4f}, mAP@10 {s['metrics']['map@10']:.4f} "
                f"(chance {s['chance']['map@10']:.4f}, majority {s['majority']['map@10']:.4f})")
r = [json.load(open(f"{out}/{name}/eval-{p}/report.json"))["scores"]["map_all"] for p in ("f32", "bf16")]
line.append(f"  mAP bf16 - f32: {r[1] - r[0]:+.4f}")
print("\n".join(line))
PY
done

# 2. Speed of the network alone.
cargo bench -q --profile bench -p medret-models --bench densenet --no-run > /dev/null 2>&1 \
    || cargo bench --profile bench -p medret-models --bench densenet --no-run
common="--arch densenet121 --size 224 --train-batch 1 --infer-batch 16 --steps 5 --threads $threads"
for p in f32 bf16; do
    cargo bench -q --profile bench -p medret-models --bench densenet -- $common --precision $p | tail -1
    if "$venv/bin/python" -c "import torch, torchvision" 2> /dev/null; then
        "$venv/bin/python" bench/densenet_torch.py $common --precision $p | tail -1
    else
        echo "PyTorch not installed in $venv (bench/densenet.sh installs it): its figures skipped"
    fi
done
