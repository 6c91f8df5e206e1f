#!/usr/bin/env bash
# Encoding an archive from its files against the network alone (`medret bench encode`):
# the demo's chest configuration (densenet-tiny, 96 px) and DenseNet-121 at 224 px, on
# phantom PNGs at a radiograph-like size. The models are trained one epoch (their speed,
# not their quality, is measured).
#
#   bench/encode.sh                       # 2,000 PNGs of 1024 px; DenseNet-121 on 256 of them
#   N=10000 SIZE=512 bench/encode.sh
#
# PROFILE picks the build (default release); MEDRET_BIN runs a given binary;
# PRECISION=bf16 encodes in bf16 (`--precision`, docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}"
WORK="${WORK:-/tmp/medret-encode}"
N="${N:-2000}"
SIZE="${SIZE:-1024}"
D121_IMAGES="${D121_IMAGES:-256}"
PROFILE="${PROFILE:-release}"
if [ -n "${MEDRET_BIN:-}" ]; then
    M="$MEDRET_BIN"
else
    cargo build -p medret-cli --locked -q --profile "$PROFILE"
    M="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/medret"
fi
mkdir -p "$WORK"
[ -f "$WORK/big/Data_Entry_2017.csv" ] || "$M" synth cxr --n "$N" --size "$SIZE" --seed 7 --out "$WORK/big" >/dev/null
[ -f "$WORK/small/Data_Entry_2017.csv" ] || "$M" synth cxr --n 48 --size 256 --seed 8 --out "$WORK/small" >/dev/null
[ -f "$WORK/tiny/model.json" ] || "$M" train hash --data "$WORK/small" --arch densenet-tiny --size 96 \
    --bits 48 --epochs 1 --batch-size 16 --seed 0 --out "$WORK/tiny" >"$WORK/tiny.log" 2>&1
[ -f "$WORK/d121/model.json" ] || "$M" train hash --data "$WORK/small" --arch densenet121 --size 224 \
    --bits 48 --epochs 1 --batch-size 16 --seed 0 --out "$WORK/d121" >"$WORK/d121.log" 2>&1
PRECISION="${PRECISION:-f32}"
"$M" bench encode --model "$WORK/tiny" --data "$WORK/big" --batch 64 --precision "$PRECISION" --json >"$WORK/tiny.json"
"$M" bench encode --model "$WORK/d121" --data "$WORK/big" --batch 16 --limit "$D121_IMAGES" --precision "$PRECISION" --json >"$WORK/d121.json"
python3 - "$WORK" "$SIZE" <<'PY'
import json, sys
work, size = sys.argv[1], sys.argv[2]
print(f"| model | images ({size} px PNG) | batch | network alone, img/s | from files, img/s | per thread | ratio | decode + prepare, 1 thread |")
print("|---|---|---|---|---|---|---|---|")
for name, label in (("tiny", "densenet-tiny, 96 px"), ("d121", "DenseNet-121, 224 px")):
    r = json.load(open(f"{work}/{name}.json"))
    print(f"| {label} | {r['images']} | {r['batch']} | {r['network_images_per_s']:.1f} | {r['pipeline_images_per_s']:.1f} | "
          f"{r['pipeline_images_per_s'] / r['threads']:.1f} | {100 * r['ratio']:.0f}% | {r['prepare_seconds_one_thread']:.1f} s |")
PY
