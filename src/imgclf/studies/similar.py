"""`similar`: the images of an embedding index (a Parquet file `imgclf embed` wrote, infer/embed.py) nearest to
query images, by cosine similarity (the inner product of L2-normalised features), with faiss.

The query images are embedded by the same model: an index whose metadata names other weights, preprocessing or
test-time augmentation is refused in one line (`check_same_model`), and so is a file `embed` did not write. A
query that cannot be read is a row with its error; the others are answered. Distances are sqrt(2 - 2 cos), the
Euclidean distance of the normalised vectors (0 for the same image, 2 for opposite ones), as core/ood.py's kNN
score measures.

The search (docs/embeddings.md has the measurements): up to EXACT_UP_TO rows, faiss's exact IndexFlatIP, built on
every call (it is a copy of the vectors: a fraction of a second next to reading the file). Above it an
approximate HNSW index (IndexHNSWFlat, inner product), whose build takes minutes at those sizes: it is built once
and kept beside the index as INDEX.hnsw (with INDEX.hnsw.json, the Parquet file's size and modification time it
was built from); a changed file, or a key that does not match, builds it again. Where that folder cannot be
written the index is built for this call only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open, write_json
from imgclf.core.options import check_output_folder
from imgclf.data.sources import open_source
from imgclf.infer.embed import Embedder, Embeddings, check_same_model, model_identity, read_embeddings, read_metadata
from imgclf.infer.predict import iter_paths
from imgclf.studies.figures import SHEET_MAX, contact_sheet

log = logging.getLogger(__name__)

# Measured (docs/embeddings.md, benchmarks/faiss_switch.py; 2 cores): an exact search needs no build and answers
# 10 queries over 200,000 x 1,280 in under a second (less than reading that file), while HNSW takes minutes to build
# there and is worth it only for thousands of queries; so exact up to a million rows, HNSW (built once, kept) past.
EXACT_UP_TO = 1_000_000
HNSW_M = 32  # graph neighbours per vector
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128  # candidates per query (at least 2 k): recall against speed
SHEET_K = 15  # neighbours a row on the contact sheet at most (the JSON and the table list all k)


def exact_index(vectors: np.ndarray):
    """faiss's exact inner-product index over `vectors` (N x D float32, normalised)."""
    import faiss  # noqa: PLC0415 - optional package, loaded by the commands that search

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def approximate_index(vectors: np.ndarray, kind: str = "hnsw"):
    """An approximate inner-product index: HNSW (what `similar` uses past EXACT_UP_TO), or IVF (benchmarked
    beside it: k-means cells, 4 sqrt(N) of them, an eighth of them searched)."""
    import faiss  # noqa: PLC0415 - optional package, loaded by the commands that search

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(x)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    cells = max(1, min(int(4 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, min(n, 64 * cells), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = max(1, cells // 8)
    return index


def search_index(path: str, emb: Embeddings, exact_up_to: int = EXACT_UP_TO):
    """(faiss index, "exact" or "hnsw") over the index file's vectors: see the module's docstring."""
    started = time.perf_counter()
    if len(emb.vectors) <= exact_up_to:
        index = exact_index(emb.vectors)
        log.info(
            "exact search (IndexFlatIP) over %d embeddings: built in %.2f s",
            len(emb.vectors),
            time.perf_counter() - started,
        )
        return index, "exact"
    index = cached_hnsw(path, emb)
    log.info(
        "approximate search (HNSW) over %d embeddings: ready in %.2f s", len(emb.vectors), time.perf_counter() - started
    )
    return index, "hnsw"


def cache_key(path: str, emb: Embeddings) -> dict:
    st = os.stat(path)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "rows": len(emb.vectors),
        "dim": int(emb.vectors.shape[1]),
        "kind": "hnsw",
        "m": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
    }


def cached_hnsw(path: str, emb: Embeddings):
    """The HNSW index of `path`, read from INDEX.hnsw where its key matches the file, else built (and kept there
    when the folder can be written)."""
    import faiss  # noqa: PLC0415 - optional package, loaded by the commands that search

    key, keep, keyfile = cache_key(path, emb), path + ".hnsw", path + ".hnsw.json"
    try:
        with open(keyfile, encoding="utf-8") as f:
            if json.load(f) == key:
                index = faiss.deserialize_index(np.fromfile(keep, dtype=np.uint8))
                index.hnsw.efSearch = HNSW_EF_SEARCH
                return index
    except (OSError, ValueError, RuntimeError) as e:  # none yet, or damaged: built again
        log.debug("no usable %s: %s", keep, e)
    log.info("building the approximate index of %d embeddings (once: kept in %s)", len(emb.vectors), keep)
    index = approximate_index(emb.vectors, "hnsw")
    try:
        with atomic_open(keep, "wb") as f:
            f.write(faiss.serialize_index(index).tobytes())
        write_json(key, keyfile)  # last: a key names only a whole index
    except OSError as e:
        log.warning("cannot keep the approximate index beside %s (%s): it is built again next time", path, e)
    return index


def neighbours(index, emb: Embeddings, queries: np.ndarray, k: int) -> list[list[dict]]:
    """Each query's k nearest rows of `emb` (fewer where the index holds fewer), nearest first."""
    k = min(int(k), len(emb.vectors))
    sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    out = []
    for row_sims, row_ids in zip(sims, ids):
        found = []
        for s, i in zip(row_sims, row_ids):
            if i < 0:  # an approximate index found fewer than k
                continue
            cos = float(min(1.0, max(-1.0, s)))
            found.append(
                {
                    "rank": len(found) + 1,
                    "path": emb.paths[i],
                    "label": emb.labels[i],
                    "split": emb.splits[i],
                    "distance": math.sqrt(max(0.0, 2.0 - 2.0 * cos)),
                    "cosine": cos,
                }
            )
        out.append(found)
    return out


def check_request(images, index: str, k, sheet: str | None) -> dict:
    """Everything `similar` can refuse before the model is opened; the index's metadata."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"-k must be a whole number of at least 1, not {k}")
    if not images:
        raise UsageError("no query images: give one or more IMAGE files (or folders of them)")
    if sheet is not None:
        if not str(sheet).lower().endswith(".png"):
            raise UsageError(f"--sheet '{sheet}': the contact sheet is a PNG: give a file name ending in .png")
        if os.path.isdir(sheet):
            raise UsageError(f"--sheet '{sheet}' is a folder: give a file name")
        check_output_folder(os.path.dirname(os.path.abspath(sheet)), "--sheet")
    return read_metadata(str(index))


def similar(
    weights,
    images,
    *,
    index: str,
    k: int = 10,
    sheet: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    exact_up_to: int = EXACT_UP_TO,
) -> list[dict]:
    """The `k` images of `index` (an `imgclf embed` Parquet file) nearest to each of `images` (files, or folders
    walked as predict walks them), embedded by `weights` (the model that wrote the index). One result per query,
    in order: {"path", "neighbours": [{"rank", "path", "label", "split", "distance", "cosine"}, ...]} (distance
    sqrt(2 - 2 cos)), or {"path", "error"} for an image that cannot be read. `sheet`: a PNG contact sheet, a row per
    query (the query, then its neighbours, each with its distance and label)."""
    images = [images] if isinstance(images, str | os.PathLike) else list(images)
    meta = check_request(images, index, k, sheet)
    queries = list(iter_paths(images))  # a path that is not there: one line, as predict says it
    embedder = Embedder(weights, device=device, batch_size=batch_size, precision=precision, workers=workers)
    check_same_model(meta, model_identity(embedder), str(index), str(weights))
    emb = read_embeddings(str(index))
    if not len(emb.vectors):
        raise UsageError(f"--index '{index}' holds no embeddings (every image in it was unreadable): embed others")
    rows = embedder.embed(queries)
    ok = [r for r in rows if "error" not in r]
    found = []
    if ok:
        faiss_index, _ = search_index(str(index), emb, exact_up_to)
        found = neighbours(faiss_index, emb, np.stack([r["embedding"] for r in ok]), k)
    answers, it = [], iter(found)
    for r in rows:
        answers.append(
            {"path": r["path"], "error": r["error"]} if "error" in r else {"path": r["path"], "neighbours": next(it)}
        )
    if sheet is not None:
        write_sheet(answers, str(sheet), meta, k=min(k, len(emb.vectors)))
    return answers


# ---------------------------------------------------------------------------------------------- the sheet


def in_memory_pixels(answers: list[dict], meta: dict) -> dict:
    """The pixels of the neighbours that are in-memory images (cifar10:test:7, digits:3), from the data set the
    index's metadata names; {} where there is none (files are read from their paths)."""
    wanted = {n["path"] for a in answers for n in a.get("neighbours", ()) if not os.path.exists(n["path"])}
    if not wanted or not meta.get("data"):
        return {}
    try:
        src = open_source(meta["data"], data_root=meta.get("data_root"), download=False, carve=False)
    except UsageError as e:
        log.warning("the contact sheet shows no pixels of %s's images: %s", meta["data"], e)
        return {}
    pixels = {}
    for split in src.splits.values():
        if split.arrays is None or split.ids is None:
            continue
        for i, name in enumerate(split.ids):
            if name in wanted:
                pixels[name] = split.arrays[i]
    return pixels


def write_sheet(answers: list[dict], path: str, meta: dict, *, k: int) -> None:
    """The contact sheet: a row per query (as many as figures.SHEET_MAX cells hold), the query then its nearest
    neighbours (SHEET_K at most), each with its distance, label and split under it."""
    k = min(k, SHEET_K)
    shown = answers[: max(1, SHEET_MAX // (k + 1))]
    pixels = in_memory_pixels(shown, meta)
    cells: list[dict | None] = []
    for a in shown:
        cells.append({"path": a["path"], "caption": "query" if "error" not in a else "query: unreadable"})
        got = a.get("neighbours", [])[:k]
        for n in got:
            where = " ".join(str(x) for x in (n["label"], n["split"]) if x is not None)
            cells.append(
                {
                    "path": n["path"],
                    "image": pixels.get(n["path"]),
                    "caption": f"{n['rank']}. d={n['distance']:.3f}" + (f"\n{where}" if where else ""),
                }
            )
        cells.extend([None] * (k - len(got)))
    more = f" (the first {len(shown)} of {len(answers)} queries)" if len(answers) > len(shown) else ""
    title = f"nearest images by {meta.get('model')} (distance sqrt(2 - 2 cos)){more}"
    contact_sheet(cells, path, title=title, cols=k + 1, numbered=False)
