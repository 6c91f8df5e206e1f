#!/usr/bin/env bash
# Exact float scan against the usearch HNSW graph on real descriptors: the trained fundus
# models' descriptors (bench/fundus_method.sh) of phantoms and IDRiD, the training split
# grown with noisy copies to N (each copy = a row plus Gaussian noise of NOISE times its
# norm), the test split as queries. Prints build time, recall@10 and queries/s per
# efSearch beside the exact scan, for each N, to find where the graph starts to win.
# Usage: bench/float_graph.sh [MODELS_DIR] [OUT_DIR]     (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-/tmp/medret-fundus-method}
out=${2:-/tmp/medret-float-graph}
mkdir -p "$out"
cargo build -q -p medret-cli
m="${CARGO_TARGET_DIR:-target}/debug/medret"
[ -d "$models/phantoms-mirror-fine" ] || { echo "no trained models in $models: run bench/fundus_method.sh first" >&2; exit 1; }
declare -A data=([phantoms]="$models/phantoms" [idrid]=../shared/data/fundus_idrid)
declare -A model=([phantoms]="$models/phantoms-mirror-fine" [idrid]="$models/fundus_idrid-mirror-fine")
: > "$out/summary.txt"
for name in phantoms idrid; do
    for s in train test; do
        [ -f "$out/$name-$s.npy" ] || $m encode --model "${model[$name]}" --data "${data[$name]}" \
            --split $s --out "$out/$name-$s.npy" --ids-out "$out/$name-$s.csv" >/dev/null
    done
    for cfg in "10000 0.5" "30000 0.5" "100000 0.5" "300000 0.5" "1000000 0.5" "1000000 0.1"; do
        set -- $cfg
        echo "== $name: N $1, noise $2" | tee -a "$out/summary.txt"
        $m bench search-float --data-file "$out/$name-train.npy" --queries-file "$out/$name-test.npy" \
            --replicate-to "$1" --noise "$2" --hnsw --ef 32,64,128,256,512 --seed 1 \
            | tee -a "$out/summary.txt"
    done
done
echo "results in $out/summary.txt"
