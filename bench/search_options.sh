#!/usr/bin/env bash
# The search-time options measured as `eval` computes them: `--flip-tta queries` (the
# query averaged with its mirror, the database encoded plainly), `--flip-tta` (both, as an
# archive built with `index build --flip-tta` is searched) and
# `--qe 1|2|4` (αQE, alpha 3), each on the validation part of the training split (where a
# default would be chosen) and the test split (for the record). Models: bench/real.sh's
# `--preset cpu` recipes, seeds 0-2 for the fundus method (mirror attention, fine
# triplet) and seed 0 for each chest set. About 15 minutes here.
#
# Usage: bench/search_options.sh [OUT_DIR]     MEDRET=/path/to/medret to run a copy.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-search-options}
shared=../shared/data
mkdir -p "$out"
if [ -z "${MEDRET:-}" ]; then
    cargo build -q --release -p medret-cli
fi
m="${MEDRET:-${CARGO_TARGET_DIR:-target}/release/medret}"
models=()
for seed in 0 1 2; do
    models+=("fundus_idrid fundus-s$seed train metric --preset cpu --data $shared/fundus_idrid --attention mirror --loss fine-triplet --seed $seed")
done
models+=("chest_xray chest-s0 train hash --preset cpu --data $shared/chest_xray --seed 0")
models+=("chest_xray_nih64 nih64-s0 train hash --preset cpu --data $shared/chest_xray_nih64 --size 64 --seed 0")
{
printf '%-18s %-10s %-5s %-8s %-8s %-8s %-8s %-8s %-8s\n' set model split none tta-q tta-both qe1 qe2 qe4
for line in "${models[@]}"; do
    read -r set name cmd <<< "$line"
    dir="$out/$name"
    [ -f "$dir/model.json" ] || $m $cmd --out "$dir" > "$dir.train.log" 2>&1
    for split in val test; do
        row=()
        for opt in "" "--flip-tta queries" "--flip-tta both" "--qe 1" "--qe 2" "--qe 4"; do
            tag=$(echo "${opt:-none}" | tr -d ' -')
            # shellcheck disable=SC2086
            "$m" eval --model "$dir" --data "$shared/$set" --query-split "$split" --database-split train \
                -k 100 $opt --json --out "$dir/eval-$split-$tag" > "$dir/eval-$split-$tag.json" 2> /dev/null
            row+=("$(python3 -c 'import json,sys; print(format(json.load(open(sys.argv[1]))["metrics"]["map@100"], ".4f"))' "$dir/eval-$split-$tag.json")")
        done
        printf '%-18s %-10s %-5s %-8s %-8s %-8s %-8s %-8s %-8s\n' "$set" "$name" "$split" "${row[@]}"
    done
done
} | tee "$out/table.txt"
