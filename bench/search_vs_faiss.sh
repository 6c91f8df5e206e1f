#!/usr/bin/env bash
# Exact top-100 search, medret vs FAISS, on the same random codes and queries, same machine,
# same run: 1M and 10M 64-bit codes and 1M 256-bit codes (IndexBinaryFlat), single thread
# and all threads; multi-index hashing vs the scan at 10M; float top-100 over N x 1024
# (IndexFlatIP). faiss-cpu and numpy go into a scratch venv; they are not medret
# dependencies. Usage: bench/search_vs_faiss.sh [FLOAT_N]   (default 1000000; 4 GB each side)
set -euo pipefail
cd "$(dirname "$0")/.."
float_n=${1:-1000000}
venv=${MEDRET_BENCH_VENV:-/tmp/medret-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import faiss, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q faiss-cpu numpy
fi
cargo build -q --release -p medret-cli
medret=${CARGO_TARGET_DIR:-target}/release/medret
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
all=$(nproc)
"$venv/bin/python" - "$work" <<'PY'
import sys, numpy as np
w = sys.argv[1]
rng = np.random.default_rng(0)
for name, n, nbytes in [("1m64", 1_000_000, 8), ("10m64", 10_000_000, 8), ("1m256", 1_000_000, 32)]:
    np.save(f"{w}/{name}.npy", rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8))
    np.save(f"{w}/{name}_q.npy", rng.integers(0, 256, size=(100, nbytes), dtype=np.uint8))
PY
ratio() {
    python3 -c "import json,sys; m=json.loads(sys.argv[1]); f=json.loads(sys.argv[2]); print(f'  medret {m[\"qps\"]:.1f} q/s, faiss {f[\"qps\"]:.1f} q/s: medret/faiss = {m[\"qps\"]/f[\"qps\"]:.2f}x')" "$1" "$2"
}
for name in 1m64 10m64 1m256; do
    for t in 1 "$all"; do
        m=$("$medret" --threads "$t" bench search -k 100 --codes-file "$work/$name.npy" --queries-file "$work/${name}_q.npy" --json)
        f=$("$venv/bin/python" bench/search_faiss.py --codes "$work/$name.npy" --queries "$work/${name}_q.npy" -k 100 --threads "$t")
        echo "binary $name, $t thread(s):"
        echo "  $m"
        echo "  $f"
        ratio "$m" "$f"
    done
done
echo "multi-index hashing vs scan, 10M 64-bit, 1 thread:"
"$medret" --threads 1 bench search -k 100 --codes-file "$work/10m64.npy" --queries-file "$work/10m64_q.npy" --mih --json
rm -f "$work"/*.npy
"$venv/bin/python" - "$work" "$float_n" <<'PY'
import sys, numpy as np
w, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
np.save(f"{w}/f.npy", rng.standard_normal((n, 1024), dtype=np.float32))
np.save(f"{w}/f_q.npy", rng.standard_normal((20, 1024), dtype=np.float32))
PY
for t in 1 "$all"; do
    m=$("$medret" --threads "$t" bench search-float -k 100 --data-file "$work/f.npy" --queries-file "$work/f_q.npy" --json)
    f=$("$venv/bin/python" bench/search_faiss.py --floats "$work/f.npy" --queries "$work/f_q.npy" -k 100 --threads "$t")
    echo "float ${float_n} x 1024, $t thread(s):"
    echo "  $m"
    echo "  $f"
    ratio "$m" "$f"
done
