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
# Usage: bench/real.sh [OUT_DIR]       SEEDS="0 1 2" for more seeds (about 15 min each)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-real}
seeds=${SEEDS:-0}
shared=../shared/data
mkdir -p "$out"
cargo build -q -p medret-cli
m="${CARGO_TARGET_DIR:-target}/debug/medret"
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
        for loss in classify dpsh csq; do
            name="$set-fusion-s$seed"; [ "$loss" = classify ] || name="$set-fusion-$loss-s$seed"
            run "$name" "$shared/$set" "${hash[@]}" --loss "$loss" --data "$shared/$set" --size "$size" --seed "$seed"
        done
    done
    if [ -d "$shared/fundus_idrid" ]; then
        run "fundus_idrid-mirror-fine-s$seed" "$shared/fundus_idrid" "${metric[@]}" --data "$shared/fundus_idrid" --attention mirror --loss fine-triplet --seed "$seed"
        run "fundus_idrid-plain-triplet-s$seed" "$shared/fundus_idrid" "${metric[@]}" --data "$shared/fundus_idrid" --attention none --loss triplet --seed "$seed"
    fi
done
python3 tools/results_table.py "$out" > docs/results.md
echo "tables in docs/results.md; reports in $out/*/eval/report.html"
