#!/usr/bin/env bash
# Binary codes of the fundus method: ITQ fitted on the training descriptors (the default of
# `train metric --binary-bits`) against the seeded random projection (`--binarise random`),
# on fundus_idrid, `--preset cpu`, seeds 0-2, at 64 and 32 bits. Each model is scored on
# the validation part of its training split (where the default was chosen) and on the
# test split; `eval` reports the descriptors' cosine ranking and each binarisation's
# Hamming ranking (`binarised` in report.json). About 1 min per model here.
#
# Usage: bench/binarise.sh [OUT_DIR]     MEDRET=/path/to/medret to run a copy.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-binarise}
data=../shared/data/fundus_idrid
mkdir -p "$out"
if [ -z "${MEDRET:-}" ]; then
    cargo build -q --release -p medret-cli
fi
m="${MEDRET:-${CARGO_TARGET_DIR:-target}/release/medret}"
{
printf '%-6s %-7s %-5s %-5s %-10s %-10s %-10s %-10s\n' bits binarise seed split descriptor model-codes simhash itq-on-db
for bits in 64 32; do
    for seed in 0 1 2; do
        for how in itq random; do
            dir="$out/b$bits-$how-s$seed"
            "$m" train metric --preset cpu --data "$data" --binary-bits "$bits" --binarise "$how" \
                --seed "$seed" --out "$dir" > "$dir.train.log" 2>&1
            for split in val test; do
                "$m" eval --model "$dir" --data "$data" --query-split "$split" --database-split train \
                    -k 10,100 --json --out "$dir/eval-$split" > "$dir/eval-$split.json" 2> /dev/null
                python3 - "$dir/eval-$split.json" "$bits" "$how" "$seed" "$split" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["binarised"]
pick = lambda p: next(v["map@100"] for k, v in b.items() if k.startswith(p))
print(f"{sys.argv[2]:<6} {sys.argv[3]:<7} {sys.argv[4]:<5} {sys.argv[5]:<5} "
      f"{r['metrics']['map@100']:<10.4f} {pick('the model'):<10.4f} {pick('SimHash'):<10.4f} {pick('ITQ'):<10.4f}")
PY
            done
        done
    done
done
} | tee "$out/table.txt"
