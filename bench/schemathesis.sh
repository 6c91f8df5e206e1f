#!/usr/bin/env bash
# The API contract checked against a live `medret serve` on loopback: schemathesis (PyPI)
# generates requests for every operation of /api/v1/openapi.json, bounded in count and
# time, and checks each answer: no 5xx, status codes, content types and bodies as the
# document says, schema-invalid requests refused, and `index check` clean afterwards.
# Usage: [MEDRET_BIN=path/to/medret] bench/schemathesis.sh [WORKDIR] [EXAMPLES=30]
# Needs `pip install schemathesis` (4.x). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/medret-schemathesis}"
examples="${2:-30}"
export CARGO_TARGET_DIR="${MEDRET_TARGET_DIR:-$HOME/.cache/medret-target}"
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
token=schemathesis-token-0123456789
echo "$token" >"$work/token"
"$medret" serve --store "$work/s.db" --addr 127.0.0.1:0 --token-file "$work/token" \
    --timeout-s 30 >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out")
# Every check but positive_data_acceptance: some rules are semantic and beyond the schema
# (a region must lie inside the image and span 8 pixels; `case_id` names one image), and
# their documented 400 is the right answer there.
st run "$url/api/v1/openapi.json" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples "$examples" \
    --request-timeout 60 \
    --generation-deterministic \
    -H "Authorization: Bearer $token" \
    --report junit --report-dir "$work/report"
"$medret" index check --store "$work/s.db"
