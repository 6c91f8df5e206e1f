"""FAISS side of bench/search_vs_faiss.sh: exact top-k with IndexBinaryFlat (codes) or
IndexFlatIP (normalised float32 descriptors) on the same .npy files medret reads."""
import argparse
import json
import time

import faiss
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--codes")
p.add_argument("--floats")
p.add_argument("--queries", required=True)
p.add_argument("-k", type=int, default=100)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
faiss.omp_set_num_threads(a.threads)
q = np.load(a.queries)
if a.codes:
    db = np.load(a.codes)
    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
else:
    db = np.load(a.floats)
    faiss.normalize_L2(db)
    faiss.normalize_L2(q)
    index = faiss.IndexFlatIP(db.shape[1])
index.add(db)
index.search(q[:1], a.k)  # warm-up
t = time.perf_counter()
# One query at a time, as medret's benchmark and a server answer them.
for i in range(len(q)):
    index.search(q[i : i + 1], a.k)
secs = time.perf_counter() - t
print(json.dumps({"framework": f"faiss {faiss.__version__}", "n": len(db), "threads": a.threads,
                  "qps": len(q) / secs, "ms_per_query": secs * 1e3 / len(q)}))
