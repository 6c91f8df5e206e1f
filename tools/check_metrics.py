#!/usr/bin/env python3
"""Recompute medret's retrieval metrics from `medret encode` outputs, independently.

numpy only. Reads the query and database files that `medret encode` writes (a uint8 .npy
of packed codes, bit i = bit i % 8 of byte i // 8, or a float32 .npy of descriptors; and
the ids CSV `path,labels,patient_id,split` with labels joined by `|`), ranks every
database item for every query by Hamming distance (codes) or 1 - cosine (descriptors),
ties by database index, and prints JSON with mAP@k, P@k and NDCG@k for each k, and
P@H<=2 for codes, under the conventions of docs/evaluation.md:

- AP@k = (1 / R_k) sum_{i<=k} P(i) rel(i), R_k the relevant items in the top k (0 if none);
- P@k = hits in the top min(k, N) / min(k, N);
- NDCG@k with gains max(0, 2 - |g_q - g_d|) for grades (same-grade relevance) or 0/1,
  ideal DCG from all gains sorted;
- P@H<=2: precision of the Hamming ball of radius 2, 0 when it is empty.

Usage:
  tools/check_metrics.py --queries Q.npy --query-ids Q.csv --database D.npy \
      --database-ids D.csv --relevance shares-label|same-grade [--bits B] [-k 10,100]
"""

import argparse
import csv
import json
import re

import numpy as np


def labels_of(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [tuple(sorted(x for x in r["labels"].split("|") if x)) for r in rows]


def grade(labels):
    if len(labels) != 1:
        return None
    m = re.search(r"(\d+)$", labels[0])
    return int(m.group(1)) if m else None


def distances(q, d, bits):
    if q.dtype == np.uint8:
        qb = np.unpackbits(q, axis=1, bitorder="little")[:, :bits].astype(np.int32)
        db = np.unpackbits(d, axis=1, bitorder="little")[:, :bits].astype(np.int32)
        # Hamming distance = bits that differ.
        return (qb[:, None, :] != db[None, :, :]).sum(axis=2).astype(np.float64)
    q = q.astype(np.float64)
    d = d.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return 1.0 - q @ d.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", required=True)
    ap.add_argument("--query-ids", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("--database-ids", required=True)
    ap.add_argument("--relevance", choices=["shares-label", "same-grade"], required=True)
    ap.add_argument("--bits", type=int, help="code length (codes only; default 8 x bytes)")
    ap.add_argument("-k", default="10,100")
    a = ap.parse_args()
    q, d = np.load(a.queries), np.load(a.database)
    ql, dl = labels_of(a.query_ids), labels_of(a.database_ids)
    assert len(ql) == len(q) and len(dl) == len(d), "ids and vectors disagree"
    codes = q.dtype == np.uint8
    bits = a.bits or (q.shape[1] * 8 if codes else None)
    ks = [int(k) for k in a.k.split(",")]
    dist = distances(q, d, bits)
    n = len(d)
    per = {f"{m}@{k}": [] for k in ks for m in ("map", "p", "ndcg")}
    if codes:
        per["p@h<=2"] = []
    for i in range(len(q)):
        # Stable sort on distance keeps database order among ties.
        order = np.argsort(dist[i], kind="stable")
        if a.relevance == "shares-label":
            rel = np.array([bool(set(ql[i]) & set(dl[j])) for j in order])
            gains = rel.astype(np.float64)
        else:
            gq = grade(ql[i])
            gd = [grade(dl[j]) for j in order]
            rel = np.array([gq is not None and g == gq for g in gd])
            gains = np.array(
                [max(0, 2 - abs(gq - g)) if gq is not None and g is not None else 0 for g in gd],
                dtype=np.float64,
            )
        ideal = np.sort(gains)[::-1]
        for k in ks:
            kk = min(k, n)
            top = rel[:kk]
            hits = np.cumsum(top)
            prec = hits / np.arange(1, kk + 1)
            per[f"map@{k}"].append(float((prec * top).sum() / top.sum()) if top.sum() else 0.0)
            per[f"p@{k}"].append(float(top.sum() / kk))
            disc = 1.0 / np.log2(np.arange(2, kk + 2))
            idcg = float((ideal[:kk] * disc).sum())
            per[f"ndcg@{k}"].append(float((gains[:kk] * disc).sum() / idcg) if idcg else 0.0)
        if codes:
            ball = dist[i][order] <= 2
            per["p@h<=2"].append(float(rel[ball].mean()) if ball.any() else 0.0)
    print(json.dumps({m: float(np.mean(v)) for m, v in per.items()}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
