#!/usr/bin/env bash
# Issue 18's levers, each alone on top of `--preset cpu`, chosen on VALIDATION only: the
# validation part of each training split (15% of patients, the model's own seed) queried
# against the rest of the training split (`medret eval --query-split val`). The test split
# is scored once per model, for the record, and never read by this script's choices.
#
# Levers: class-balanced and square-root sampling (`train hash --sampling`), C2L
# pretraining on the union of every chest image's training split (`pretrain c2l`, then
# `train hash --init`), and the retrieval-side αQE / DBA (`eval --qe N --dba N`) over
# every model.
#
# Usage: bench/levers.sh [OUT_DIR]     SEED=0 by default; C2L_EPOCHS=40 by default
# Prints one line per (model, expansion) with validation and test mAP@100; the whole
# table goes to OUT_DIR/levers.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/medret-levers}
seed=${SEED:-0}
c2l_epochs=${C2L_EPOCHS:-40}
shared=$(cd ../shared/data && pwd)
mkdir -p "$out"
cargo build -q -p medret-cli
m="$(pwd)/${CARGO_TARGET_DIR:-target}/debug/medret"
[ -x "$m" ] || m="${CARGO_TARGET_DIR}/debug/medret"
tsv="$out/levers.tsv"
printf 'model\texpansion\tval_map100\ttest_map100\tval_majority\ttest_majority\ttrain_s\n' > "$tsv"

map100() {
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%.4f\t%.4f" % (r["metrics"]["map@100"], r["scores"]["majority"]["map@100"]))' "$1"
}

score() { # name, data, train seconds
    local name=$1 data=$2 secs=$3
    for e in "0 0" "1 0" "2 0" "4 0" "0 1" "0 2" "2 1"; do
        set -- $e
        local tag="qe$1-dba$2"
        "$m" eval --model "$out/$name" --data "$data" --query-split val -k 100 --gallery 0 --resamples 200 --qe "$1" --dba "$2" --out "$out/$name/val-$tag" --json > "$out/$name/val-$tag.json" 2> /dev/null
        "$m" eval --model "$out/$name" --data "$data" -k 100 --gallery 0 --resamples 200 --qe "$1" --dba "$2" --out "$out/$name/test-$tag" --json > "$out/$name/test-$tag.json" 2> /dev/null
        local v t
        v=$(map100 "$out/$name/val-$tag.json")
        t=$(map100 "$out/$name/test-$tag.json")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tag" "${v%%$'\t'*}" "${t%%$'\t'*}" "${v##*$'\t'}" "${t##*$'\t'}" "$secs" | tee -a "$tsv"
    done
}

train() { # name, data, then the training command's arguments
    local name=$1 data=$2; shift 2
    local t0 t1
    t0=$(date +%s)
    # A model already trained (an earlier, interrupted run) is scored again, not retrained.
    [ -f "$out/$name/model.json" ] || "$m" "$@" --seed "$seed" --out "$out/$name" > "$out/$name.train.log" 2>&1
    t1=$(date +%s)
    score "$name" "$data" $(( t1 - t0 ))
}

for set in chest_xray chest_xray_nih64; do
    data="$shared/$set"
    size=96; [ "$set" = chest_xray_nih64 ] && size=64
    base=(train hash --preset cpu --data "$data" --size "$size")
    train "$set-default" "$data" "${base[@]}"
    train "$set-balanced" "$data" "${base[@]}" --sampling balanced
    train "$set-sqrt" "$data" "${base[@]}" --sampling sqrt
done
data="$shared/fundus_idrid"
train "fundus_idrid-default" "$data" train metric --preset cpu --data "$data" --attention mirror --loss fine-triplet

# C2L on the union of the chest training splits (no test image of either set), at the
# preset's resolution, from a manifest of absolute paths (nothing is copied).
union="$out/c2l-union"
mkdir -p "$union"
python3 - "$shared" "$union/manifest.csv" <<'EOF'
import csv, os, sys
shared, dst = sys.argv[1], sys.argv[2]
rows = []
for s in ("chest_xray", "chest_xray_nih64"):
    with open(os.path.join(shared, s, "manifest.csv")) as f:
        for r in csv.DictReader(f):
            if r["split"] == "train":
                rows.append({"path": os.path.join(shared, s, r["path"]), "labels": "", "patient_id": s + ":" + r["patient_id"], "split": "train"})
with open(dst, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["path", "labels", "patient_id", "split"])
    w.writeheader()
    w.writerows(rows)
print(f"C2L union: {len(rows)} training images", file=sys.stderr)
EOF
if [ ! -f "$union/model/backbone.safetensors" ]; then
    t0=$(date +%s)
    "$m" pretrain c2l --data "$union/manifest.csv" --arch densenet-tiny --size 96 --epochs "$c2l_epochs" --seed "$seed" --out "$union/model" > "$union/train.log" 2>&1
    echo "== C2L union: $(( $(date +%s) - t0 )) s"
fi

for set in chest_xray chest_xray_nih64; do
    data="$shared/$set"
    size=96; [ "$set" = chest_xray_nih64 ] && size=64
    train "$set-c2l" "$data" train hash --preset cpu --data "$data" --size "$size" --init "$union/model/backbone.safetensors"
done
echo "table: $tsv"
