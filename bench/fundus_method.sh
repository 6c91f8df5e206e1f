#!/usr/bin/env bash
# The fundus method, measured: mirror attention + fine triplet loss against the plain
# backbone + batch-hard triplet (same backbone, size, epochs, seed), on fundus phantoms and
# ../shared/data/fundus_idrid, test split -> training split, same-grade relevance, with the
# chance and always-majority levels; then how much of each model's saliency falls on lesion
# pixels against their area share.
# Usage: bench/fundus_method.sh [OUT_DIR]          (about half an hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-fundus-method}
mkdir -p "$out"
# Dependencies are optimised at level 3 in the dev profile; see bench/cxr_method.sh.
cargo build -q -p medret-cli
m="${CARGO_TARGET_DIR:-target}/debug/medret"
common=(--arch densenet-tiny --size 96 --epochs 12 --batch-size 20 --lr 1e-3 --seed 0)
log() { echo "== $*" | tee -a "$out/summary.txt"; }
run() { local t0; t0=$(date +%s); "$@" 2>>"$out/stderr.txt" | tee -a "$out/summary.txt"; echo "   ($(( $(date +%s) - t0 )) s)" | tee -a "$out/summary.txt"; }

$m synth fundus --n 800 --size 128 --seed 11 --out "$out/phantoms" >/dev/null
sets=("$out/phantoms")
[ -d ../shared/data/fundus_idrid ] && sets+=(../shared/data/fundus_idrid)
for data in "${sets[@]}"; do
    name=$(basename "$data")
    log "$name: mirror attention + fine triplet"
    run $m train metric --data "$data" "${common[@]}" --attention mirror --loss fine-triplet --out "$out/$name-mirror-fine"
    log "$name: plain backbone + batch-hard triplet"
    run $m train metric --data "$data" "${common[@]}" --attention none --loss triplet --out "$out/$name-none-triplet"
    for v in mirror-fine none-triplet; do
        log "$name $v: saliency on lesions (test split)"
        run $m bench saliency --model "$out/$name-$v" --data "$data" || true
    done
done
echo "results in $out/summary.txt"
