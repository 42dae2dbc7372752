"""Where `imgclf similar` switches from the exact faiss index to an approximate one (issue 25): build and query
times of IndexFlatIP (exact) against IndexHNSWFlat and IndexIVFFlat (approximate, inner product) on random
L2-normalised vectors, and the approximate indexes' recall@10 (the share of the exact 10 nearest they return).

Uniform random vectors are the hard case for an approximate index (no clusters to exploit); `--clusters C` draws
them around C random centres instead (a centre plus noise of the same norm, normalised), as embeddings cluster by
class; the queries are drawn the same way.

    .venv/bin/python benchmarks/faiss_switch.py [--sizes 10000 60000 200000] [--dims 256 1280] [--queries 10 1000]
        [--hnsw-up-to N] [--clusters C]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from imgclf.studies.similar import approximate_index, exact_index

K = 10


def normalised(n: int, d: int, rng, centres: np.ndarray | None = None) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    if centres is not None:
        x = centres[rng.integers(0, len(centres), n)] * np.float32(np.sqrt(d)) + x
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def one(n: int, d: int, queries: list[int], rng, hnsw_up_to: int, clusters: int = 0) -> list[dict]:
    centres = normalised(clusters, d, rng) if clusters else None
    base = normalised(n, d, rng, centres)
    q = normalised(max(queries), d, rng, centres)
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
                    "clusters": clusters,
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
    ap.add_argument("--clusters", type=int, default=0, help="vectors around this many centres (0: uniform)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    rng = np.random.default_rng(a.seed)
    for d in a.dims:
        for n in a.sizes:
            one(n, d, a.queries, rng, a.hnsw_up_to, a.clusters)


if __name__ == "__main__":
    main()
