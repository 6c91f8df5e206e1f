#!/usr/bin/env bash
# Fuzzes medret's parsers with cargo fuzz (libFuzzer, nightly), one target after another,
# then minimises each corpus. Prints one line per target; the logs go to $WORK.
#
#   bench/fuzz.sh                 # every target, 600 s each
#   bench/fuzz.sh 60              # 60 s each
#   bench/fuzz.sh 300 dicom npy   # only these targets
#
# Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz`. A crash stops
# its target's run and leaves the input under fuzz/artifacts/<target>/; once it is fixed,
# copy the input to fuzz/regressions/<target>/, which the stable replay test covers
# (cargo test -p medret-data --test fuzz_corpus, and -p medret-server for model_card,
# fields and form). See docs/fuzzing.md.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-600}"
shift || true
TARGETS="${*:-dicom image npy manifest model_card fields form}"
WORK="${WORK:-/tmp/medret-fuzz}"
mkdir -p "$WORK"

nice -n 19 cargo +nightly fuzz build || exit 1
status=0
for t in $TARGETS; do
    dirs=("corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    log="$WORK/$t.log"
    nice -n 19 cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    nice -n 19 cargo +nightly fuzz cmin "$t" "corpus/$t" >"$WORK/$t.cmin.log" 2>&1
    execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    speed=$(grep -o 'average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
    files=$(find "corpus/$t" -type f | wc -l)
    size=$(du -sh "corpus/$t" | cut -f1)
    echo "$t: exit $rc, ${execs:-?} executions, ${speed:-?} exec/s, corpus $files files ($size) after cmin; log $log"
done
# cmin keeps only inputs that add coverage, which can drop the hand-made seed-* files the
# replay tests check; write them again.
for crate in medret-data medret-server; do
    (cd .. && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medret-target}" \
        nice -n 19 cargo test -q -p "$crate" --test fuzz_corpus -- --ignored write_seeds \
        >"$WORK/seeds-$crate.log" 2>&1) || { echo "writing the seeds failed: $WORK/seeds-$crate.log"; status=1; }
done
exit $status
