#!/usr/bin/env python3
"""Write docs/results.md from the runs of bench/real.sh (standard library only).

Reads OUT/runs.txt (name|data|train seconds|training arguments) and each run's
OUT/NAME/eval/report.json, and prints markdown: per dataset, the model's figures with
their bootstrap 95% intervals beside the chance and always-majority levels and the
model-free baselines on the same splits.
"""

import json
import os
import platform
import random
import sys


def paired(a, b, resamples=2000, seed=0):
    """Mean of a - b and its percentile bootstrap 95% interval over the same queries."""
    d = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(d)
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(d) / n, stats[round(0.025 * (resamples - 1))], stats[round(0.975 * (resamples - 1))]


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def main():
    out = sys.argv[1]
    runs = []
    with open(os.path.join(out, "runs.txt")) as f:
        for line in f:
            name, data, secs, args = line.rstrip("\n").split("|", 3)
            with open(os.path.join(out, name, "eval", "report.json")) as r:
                runs.append((name, data, int(secs), args, json.load(r)))
    print("# Results on the real image subsets\n")
    print("Written by `bench/real.sh` (through `tools/results_table.py`); every figure is")
    print("the test split scored against the training split with `medret eval`, with its")
    print("bootstrap 95% interval over queries. Chance is the mean of 5 seeded random")
    print("rankings, always-majority gives every query the most frequent label's cases first,")
    print("and the baselines are LSH over raw 32 x 32 pixels and over a random-init backbone's")
    print("pooled features, at the model's code length (64 bits for descriptor models), on the")
    print("same splits. Settings were fixed before any test figure was seen; the epoch kept")
    print("is the best on the validation part (15% of patients) of the training split, among")
    print("the epochs whose training codes are healthy for the hash models (docs/cxr-method.md).")
    print("Chest codes are ranked by Hamming distance with ties broken by the relaxed codes")
    print("(docs/evaluation.md); the hash layer is batch-normalised and trained with bit")
    print("decorrelation, and the levers tried beyond that are in docs/cxr-method.md")
    print('("Codes that use their bits", "Levers tried for retrieval quality").')
    print("Rows named `-rf-` are the same models ranked relevance-first (`medret eval")
    print("--relevance-first`, docs/evaluation.md): cases ordered by the probability that the")
    print("query shares one of their labels, from the chest model's classifier or, for the")
    print("fundus model (no classifier), its 10 nearest cases' grades; the code ranking within")
    print("equal probabilities. They use the database's labels, as always-majority does, and the")
    print("archive search does not offer them yet. Their baselines are re-ranked the same way")
    print("(`..., relevance-first`, from their own neighbours), and the last two columns of each")
    print("over-seeds table compare every variant with the best baseline ranked as it is.")
    print("Below each dataset's readings, each run's difference from each baseline ranked the")
    print("same way is paired over queries (a percentile bootstrap of the per-query")
    print("differences; established when its interval excludes 0).\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only.\n")
    by_data = {}
    for r in runs:
        by_data.setdefault(r[1], []).append(r)
    for data, rs in by_data.items():
        rep = rs[0][4]
        prot = rep["protocol"]
        ks = ["map@10", "map@100", "p@10", "ndcg@10"]
        if "p@h<=2" in rep["metrics"]:
            ks.append("p@h<=2")
        print(f"## `{os.path.basename(data)}`\n")
        print(f"Queries: {prot['queries']}. Database: {prot['database']}. Relevance: {prot['relevance']}.\n")
        print("| run | " + " | ".join(ks) + " | train time |")
        print("|---|" + "---|" * (len(ks) + 1))
        for name, _, secs, _, rep in rs:
            s = rep["scores"]
            cells = [f"**{fmt(s['metrics'].get(k))}** [{fmt(s['intervals'].get(k, [None, None])[0])}, {fmt(s['intervals'].get(k, [None, None])[1])}]" for k in ks]
            print(f"| {name} | " + " | ".join(cells) + f" | {secs} s |")
        s = rs[0][4]["scores"]
        print("| chance | " + " | ".join(fmt(s["chance"].get(k)) for k in ks) + " | |")
        print("| always-majority | " + " | ".join(fmt(s["majority"].get(k)) for k in ks) + " | |")
        for b, bs in rs[0][4]["baselines"].items():
            print(f"| {b} | " + " | ".join(fmt(bs["metrics"].get(k)) for k in ks) + " | |")
        print()
        # Over seeds: each variant's mean mAP@100 against the best model-free baseline.
        variants = {}
        same_way = {}
        for name, _, _, _, rep in rs:
            base = name.rsplit("-s", 1)[0] if name.rsplit("-s", 1)[-1].isdigit() else name
            variants.setdefault(base, []).append(rep["scores"]["metrics"]["map@100"])
            # The best baseline ranked as this variant is: relevance-first rows against
            # the baselines re-ranked relevance-first, the others against the plain ones.
            rf = "-rf" in base
            cands = {b: v["metrics"]["map@100"] for b, v in rep["baselines"].items() if b.endswith(", relevance-first") == rf}
            if cands and base not in same_way:
                b = max(cands, key=cands.get)
                same_way[base] = (b, cands[b])
        bl = {b: v["metrics"]["map@100"] for b, v in rs[0][4]["baselines"].items()}
        best_b = max(bl, key=bl.get)
        maj = rs[0][4]["scores"]["majority"]["map@100"]
        print(f"Over seeds, mAP@100 (best model-free baseline: {best_b} {bl[best_b]:.3f}; always-majority {maj:.3f}):\n")
        print("| variant | seeds | mean | range | mean / best baseline | mean / always-majority | best baseline ranked the same way | mean / it |")
        print("|---|---|---|---|---|---|---|---|")
        for v, xs in variants.items():
            m = sum(xs) / len(xs)
            sb, sv = same_way.get(v, (best_b, bl[best_b]))
            print(f"| {v} | {len(xs)} | {m:.3f} | {min(xs):.3f} - {max(xs):.3f} | {m / bl[best_b]:.2f}x | {m / maj:.2f}x | {sb} {sv:.3f} | {m / sv:.2f}x |")
        print()
        for name, _, secs, args, rep in rs:
            print(f"- `{name}`: `medret {args}`")
        print()
        # The reading, mechanical: a level counts as beaten only when the interval's lower
        # end is above it.
        for name, _, _, _, rep in rs:
            s = rep["scores"]
            for k in ("map@100", "map@10", "p@10"):
                lo, hi = s["intervals"][k]
                refs = {"chance": s["chance"][k], "always-majority": s["majority"][k]}
                refs.update({b: v["metrics"][k] for b, v in rep["baselines"].items()})
                above = [r for r, v in refs.items() if lo > v]
                inside = [r for r, v in refs.items() if lo <= v <= hi]
                below = [r for r, v in refs.items() if v > hi]
                parts = []
                if above:
                    parts.append("above " + ", ".join(above))
                if inside:
                    parts.append("not separated from " + ", ".join(inside))
                if below:
                    parts.append("below " + ", ".join(below))
                print(f"- `{name}` {k}: " + "; ".join(parts) + ".")
        # Each run against each baseline ranked the same way, paired over queries (the
        # baselines' per-query values are in report.json from this version on).
        for name, _, _, _, rep in rs:
            bpq = rep.get("baseline_per_query") or {}
            rf = "-rf-" in name
            for b in sorted(bpq):
                if b.endswith(", relevance-first") != rf:
                    continue
                for k in ("map@100", "map@10", "p@10"):
                    m, lo, hi = paired(rep["per_query"][k], bpq[b][k])
                    mark = " (established)" if lo > 0 or hi < 0 else " (not established)"
                    print(f"- `{name}` - {b}, {k}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}], paired over queries{mark}.")
        # Runs on the same split against the first one, paired over queries.
        first = rs[0]
        for name, _, _, _, rep in rs[1:]:
            for k in ("map@10", "map@100", "p@10", "ndcg@10"):
                a, b = first[4]["per_query"][k], rep["per_query"][k]
                m, lo, hi = paired(a, b)
                mark = " (established)" if lo > 0 or hi < 0 else " (not established)"
                print(f"- `{first[0]}` - `{name}`, {k}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}], paired over queries{mark}.")
        print()


if __name__ == "__main__":
    main()
