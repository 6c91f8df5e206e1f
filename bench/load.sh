#!/usr/bin/env bash
# Bounded load test of `medret serve` on loopback: concurrent image searches with ingests
# in parallel, over archives of 10k and 1M cases. Stops by itself. Prints one line per
# archive size and writes the JSON reports under $WORK.
#
#   bench/load.sh                      # 10k and 1M cases, 30 s each, 4 clients
#   SIZES=10000 SECONDS_EACH=10 bench/load.sh
#   SIZES=1000000 CLIENTS=1 INGEST_MS=0 PROFILE=release bench/load.sh   # one client's latency
#
# PROFILE picks the build (default dev: the workspace's dev profile optimises the
# dependencies; release is what a deployment runs); MEDRET_BIN runs a given binary.
#
# The 1M archive is the 10k one grown with noisy copies of its codes (`medret bench
# grow-store`): the same image per copy, so searches and explanations cost what they
# would, and the index holds 1M codes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}"
WORK="${WORK:-/tmp/medret-load}"
SIZES="${SIZES:-10000 1000000}"
SECONDS_EACH="${SECONDS_EACH:-30}"
CLIENTS="${CLIENTS:-4}"
INGEST_MS="${INGEST_MS:-250}"

PROFILE="${PROFILE:-dev}"
if [ -n "${MEDRET_BIN:-}" ]; then
    M="$MEDRET_BIN"
else
    cargo build -p medret-cli --locked -q --profile "$PROFILE"
    M="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/medret"
fi
mkdir -p "$WORK"
# The demo's chest configuration: densenet-tiny at 96 px, 48-bit codes.
[ -f "$WORK/cxr/Data_Entry_2017.csv" ] || "$M" synth cxr --n 2000 --size 128 --seed 3 --out "$WORK/cxr" >/dev/null
[ -f "$WORK/model/model.json" ] || "$M" train hash --data "$WORK/cxr" --arch densenet-tiny --size 96 \
    --bits 48 --epochs 3 --batch-size 32 --seed 0 --out "$WORK/model" >"$WORK/train.log" 2>&1
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/token"

for N in $SIZES; do
    store="$WORK/s$N.db"
    rm -rf "$store" "$store-wal" "$store-shm" "$store.images"
    "$M" index build --store "$store" --name cxr48 --model "$WORK/model" --data "$WORK/cxr" >/dev/null
    "$M" bench grow-store --store "$store" --model cxr48 --to "$N" >/dev/null
    "$M" serve --store "$store" --addr 127.0.0.1:0 --token-file "$WORK/token" >"$WORK/serve-$N.out" 2>"$WORK/serve-$N.err" &
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    for _ in $(seq 600); do grep -q listening "$WORK/serve-$N.out" 2>/dev/null && break; sleep 0.5; done
    url=$(grep -o 'http://[0-9.:]*' "$WORK/serve-$N.out")
    "$M" bench load --url "$url" --model cxr48 --images "$WORK/cxr/images" --seconds "$SECONDS_EACH" \
        --clients "$CLIENTS" --ingest-every-ms "$INGEST_MS" --token-file "$WORK/token" --json >"$WORK/load-$N.json"
    "$M" bench load --url "$url" --model cxr48 --images "$WORK/cxr/images" --seconds "$SECONDS_EACH" \
        --clients "$CLIENTS" --ingest-every-ms "$INGEST_MS" --token-file "$WORK/token" --explain false --json >"$WORK/load-$N-noexplain.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "$WORK" $SIZES <<'PY'
import json, sys
work, sizes = sys.argv[1], sys.argv[2:]
print("| cases | explain | searches/s | p50 ms | p99 ms | decode p50 | encode p50 | search p50 / p99 | explain p50 | errors | ingests (lost) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n in sizes:
    for suffix, ex in (("", "yes"), ("-noexplain", "no")):
        r = json.load(open(f"{work}/load-{n}{suffix}.json"))
        print(f"| {r['index_cases_before']} | {ex} | {r['searches_per_second']:.1f} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | "
              f"{r['decode_ms']['p50']:.2f} | {r['encode_ms']['p50']:.1f} | {r['search_ms']['p50']:.2f} / {r['search_ms']['p99']:.2f} | "
              f"{r['explain_ms']['p50']:.1f} | {r['search_errors']} | {r['ingests_committed']} ({r['committed_cases_lost']}) |")
PY
