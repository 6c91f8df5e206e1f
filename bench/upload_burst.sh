#!/usr/bin/env bash
# Peak resident memory of `medret serve` under 16 concurrent worst-case uploads (issue 19):
#   1. RLE DICOMs of ~4 MB whose headers claim 16000 x 16000 pixels: refused (413) from
#      the header, before any pixel is decoded;
#   2. RGB PNGs of ~200 KB that really are 8192 x 8192 (the default --max-pixels): each
#      decoded (768 MiB as float32 RGB), within the server's decode budget (4096 MiB by
#      default), so at most two decode at once and the rest wait.
# Usage: [MEDRET_BIN=path/to/medret] bench/upload_burst.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/medret-upload-burst}"
export CARGO_TARGET_DIR="${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}"
# MEDRET_BIN: a medret binary already built (the dev build decodes with the same
# optimised dependencies).
if [ -z "${MEDRET_BIN:-}" ]; then
    cargo build --release -p medret-cli --locked
fi
medret="${MEDRET_BIN:-$CARGO_TARGET_DIR/release/medret}"
rm -rf "$work" && mkdir -p "$work"
"$medret" synth cxr --n 80 --size 64 --seed 5 --out "$work/data" >/dev/null
"$medret" train hash --data "$work/data" --arch densenet-tiny --size 32 --bits 16 \
    --epochs 1 --batch-size 16 --out "$work/model" >/dev/null
"$medret" index build --store "$work/s.db" --name cxr16 --model "$work/model" \
    --data "$work/data" --split train >/dev/null
"$medret" serve --store "$work/s.db" --addr 127.0.0.1:0 --concurrency 16 >"$work/serve.out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out")
python3 bench/upload_burst.py "$url" "$pid" cxr16 --rows 16000 --cols 16000 --n 16
python3 bench/upload_burst.py "$url" "$pid" cxr16 --rows 8192 --cols 8192 --n 16 --png
