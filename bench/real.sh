#!/usr/bin/env bash
# Both methods on the real image subsets in ../shared/data (chest_xray, chest_xray_nih64:
# the chest method; fundus_idrid: the fundus method and its plain-backbone baseline),
# training split -> database, test split -> queries, each evaluated with `medret eval
# --baselines`; the tables go to docs/results.md (tools/results_table.py).
#
# Settings are the ones a user would run on a CPU, fixed before looking at any test
# figure: densenet-tiny, 12 epochs, the learning rates of the method scripts; the epoch
# kept is the one that scored best on the validation part of the training split (15% of
# its patients), never on the test split.
#
# Usage: bench/real.sh [OUT_DIR]       SEEDS="0 1 2" for more seeds (about 6 min each here);
#        LOSSES="classify" for the paper's loss alone (default: classify dpsh csq)
#
# Each classify-loss chest model and each mirror-attention fundus model is also scored
# relevance-first (its own row, `-rf`), with the query's class probabilities from its
# nearest cases (`--relevance-first neighbours`): chosen on the validation parts over
# the chest classifier's probabilities, which fail on some seeds (docs/cxr-method.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-real}
seeds=${SEEDS:-0}
shared=../shared/data
mkdir -p "$out"
# MEDRET=/path/to/medret runs a copy, so that the tree can be rebuilt meanwhile.
if [ -z "${MEDRET:-}" ]; then
    cargo build -q -p medret-cli
fi
m="${MEDRET:-${CARGO_TARGET_DIR:-target}/debug/medret}"
: > "$out/runs.txt"
run() { # name, data, then the training command's arguments
    local name=$1 data=$2; shift 2
    local t0 t1
    t0=$(date +%s)
    "$m" "$@" --out "$out/$name" > "$out/$name.train.log" 2>&1
    t1=$(date +%s)
    "$m" eval --model "$out/$name" --data "$data" --baselines -k 10,100 --gallery 8 --out "$out/$name/eval" > "$out/$name.eval.log" 2>&1
    echo "$name|$data|$(( t1 - t0 ))|$*" >> "$out/runs.txt"
    echo "== $name: trained in $(( t1 - t0 )) s"
    # The same model ranked relevance-first (`eval --relevance-first`, docs/evaluation.md):
    # a row of its own, named with -rf before the seed.
    if [ -n "${rf:-}" ]; then
        local rname="${name%-s*}-rf-s${name##*-s}"
        "$m" eval --model "$out/$name" --data "$data" --baselines -k 10,100 --gallery 8 --relevance-first "$rf" --out "$out/$rname/eval" > "$out/$rname.eval.log" 2>&1
        echo "$rname|$data|$(( t1 - t0 ))|$* (eval --relevance-first $rf)" >> "$out/runs.txt"
    fi
}
# `--preset cpu` (crates/cli/src/preset.rs): densenet-tiny, 48 bits, 12 epochs, batch 32,
# lr 3e-3 for hashing (96 px; chest_xray_nih64 keeps its native 64 px, given explicitly);
# densenet-tiny, 96 px, 12 epochs, batch 20, lr 1e-3 for the fundus method. Budget: 30
# minutes of training per model on 2 cores; measured 17-72 s a model (docs/results.md).
hash=(train hash --preset cpu)
metric=(train metric --preset cpu)
for seed in $seeds; do
    # The paper's classifier loss first (the rows compare against it), then the two
    # deep-hashing losses on the same head and trainer.
    for set in chest_xray chest_xray_nih64; do
        [ -d "$shared/$set" ] || continue
        size=96; [ "$set" = chest_xray_nih64 ] && size=64
        for loss in ${LOSSES:-classify dpsh csq}; do
            name="$set-fusion-s$seed"; [ "$loss" = classify ] || name="$set-fusion-$loss-s$seed"
            rf=""; [ "$loss" = classify ] && rf=neighbours
            rf=$rf run "$name" "$shared/$set" "${hash[@]}" --loss "$loss" --data "$shared/$set" --size "$size" --seed "$seed"
        done
    done
    if [ -d "$shared/fundus_idrid" ]; then
        rf=neighbours run "fundus_idrid-mirror-fine-s$seed" "$shared/fundus_idrid" "${metric[@]}" --data "$shared/fundus_idrid" --attention mirror --loss fine-triplet --seed "$seed"
        rf= run "fundus_idrid-plain-triplet-s$seed" "$shared/fundus_idrid" "${metric[@]}" --data "$shared/fundus_idrid" --attention none --loss triplet --seed "$seed"
    fi
done
python3 tools/results_table.py "$out" > docs/results.md
echo "tables in docs/results.md; reports in $out/*/eval/report.html"
