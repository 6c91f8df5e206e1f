#!/usr/bin/env bash
# The chest method, measured: fusion hashing against raw-pixel LSH and random-init feature
# LSH (same bits, same splits, with chance and always-majority levels) on chest phantoms
# and the real chest sets in ../shared/data; C2L pretraining (kNN mAP@100 of its backbone
# against a random one) and C2L init against random init with scarce labels; the crop's
# hit rate on lesion masks. CPU settings a user could run in an afternoon (densenet-tiny,
# 96 px); every figure comes from the test split, every setting was chosen on validation.
# Usage: bench/cxr_method.sh [OUT_DIR]          (about an hour and a half on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-cxr-method}
mkdir -p "$out"
# The dev profile optimises every dependency (burn, gemm) at level 3, which is where
# training spends its time; a release build of burn costs a quarter of an hour more.
cargo build -q -p medret-cli
m="${CARGO_TARGET_DIR:-target}/debug/medret"
shared=../shared/data
common=(--arch densenet-tiny --bits 48 --epochs 12 --batch-size 32 --lr 3e-3 --seed 0)
log() { echo "== $*" | tee -a "$out/summary.txt"; }
run() { local t0; t0=$(date +%s); "$@" 2>>"$out/stderr.txt" | tee -a "$out/summary.txt"; echo "   ($(( $(date +%s) - t0 )) s)" | tee -a "$out/summary.txt"; }

$m synth cxr --n 800 --size 128 --seed 11 --out "$out/phantoms" >/dev/null
log "fusion hash, chest phantoms (800, 96 px)"
run $m train hash --data "$out/phantoms" --size 96 "${common[@]}" --out "$out/hash-phantoms"
for set in chest_xray chest_xray_nih64; do
    if [ -d "$shared/$set" ]; then
        size=96; [ "$set" = chest_xray_nih64 ] && size=64
        log "fusion hash, $set ($size px)"
        run $m train hash --data "$shared/$set" --size $size "${common[@]}" --out "$out/hash-$set"
    fi
done

# C2L, then fusion hashing with scarce labels from its backbone against random init.
# (name, data, size, label fraction, pretraining flags)
c2l_runs=(
    "phantoms|$out/phantoms|96|0.1|--epochs 6 --ema 0.99"
    "chest_xray|$shared/chest_xray|96|0.25|--epochs 40 --ema 0.99"
    "chest_xray_nih64|$shared/chest_xray_nih64|64|0.25|--epochs 200"
)
for spec in "${c2l_runs[@]}"; do
    IFS='|' read -r name data size frac flags <<<"$spec"
    [ -e "$data" ] || continue
    log "C2L pretraining, $name ($size px, $flags)"
    # shellcheck disable=SC2086
    run $m pretrain c2l --data "$data" --arch densenet-tiny --size "$size" --batch-size 32 $flags --out "$out/c2l-$name"
    for init in random c2l; do
        extra=(); [ $init = c2l ] && extra=(--init "$out/c2l-$name/backbone.safetensors")
        log "fusion hash, $name, $frac of the labels, $init init"
        run $m train hash --data "$data" --size "$size" "${common[@]}" --label-fraction "$frac" "${extra[@]}" --out "$out/hash-scarce-$name-$init"
    done
done

log "crop hit rate (test split, lesion masks), phantom model"
run $m bench crop --model "$out/hash-phantoms" --data "$out/phantoms"
echo "results in $out/summary.txt"
