"""Where `imgclf similar` switches from the exact faiss index to an approximate one (issue 25): build and query
times of IndexFlatIP (exact) against IndexHNSWFlat and IndexIVFFlat (approximate, inner product) on random
L2-normalised vectors, and the approximate indexes' recall@10 (the share of the exact 10 nearest they return).

Random vectors are the hard case for an approximate index (no clusters to exploit): real embeddings, which
cluster by class, give it a higher recall at the same settings.

    .venv/bin/python benchmarks/faiss_switch.py [--sizes 10000 60000 200000] [--dims 256 1280] [--queries 10 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from imgclf.studies.similar import approximate_index, exact_index

K = 10


def normalised(n: int, d: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def one(n: int, d: int, queries: list[int], rng, hnsw_up_to: int) -> list[dict]:
    base = normalised(n, d, rng)
    q = normalised(max(queries), d, rng)
    rows = []
    exact, built = timed(lambda: exact_index(base))
    (_, truth), _ = timed(lambda: exact.search(q, K))
    kinds = [("exact", exact, built)]
    ivf, built = timed(lambda: approximate_index(base, "ivf"))
    kinds.append(("ivf", ivf, built))
    if n <= hnsw_up_to:
        hnsw, built = timed(lambda: approximate_index(base, "hnsw"))
        kinds.append(("hnsw", hnsw, built))
    for name, index, built in kinds:
        for nq in queries:
            (_, got), took = timed(lambda index=index, nq=nq: index.search(q[:nq], K))
            recall = float(np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth[:nq])]))
            rows.append(
                {
                    "n": n,
                    "d": d,
                    "index": name,
                    "queries": nq,
                    "build_s": round(built, 3),
                    "query_s": round(took, 4),
                    "total_s": round(built + took, 3),
                    "recall@10": round(recall, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 200_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 1280])
    ap.add_argument("--queries", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--hnsw-up-to", type=int, default=200_000, help="HNSW's build is slow: only up to this size")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    rng = np.random.default_rng(a.seed)
    for d in a.dims:
        for n in a.sizes:
            one(n, d, a.queries, rng, a.hnsw_up_to)


if __name__ == "__main__":
    main()
