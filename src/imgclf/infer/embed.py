"""`embed`: every image's penultimate features (L2-normalised, `Runner.features`) as a Parquet file with its path,
label and split, streamed as `predict_files` streams predictions (infer/stream/: chunks, bounded memory, --resume,
torchrun shards merged in input order, the file written under a temporary name and renamed).

    imgclf embed best.pt cifar10 --output emb.parquet             # a data set: every split, labels and split names
    imgclf embed best.pt photos/ --files-from list.txt --output emb.parquet   # files: label and split null

What the inputs are: one PATH that names a data set as --data does for training (cifar10, cifar100, digits, a CSV
manifest, a folder with a train/ split folder, or the folder the model was trained on) gives every image of every
split (train, val, test: a validation split carved as the model's training carved it), with its label (a
multi-label image's set as `a|b`) and split; anything else (files, folders walked recursively, --files-from) is
read as predict reads it, with label and split null. An unreadable image is a row with its error and no embedding.

The file's schema metadata (key `imgclf`, JSON: `index_metadata`) records what made it: the model's name, the
digest of its weights (a checkpoint: its state dict's tensors, so calibrating or refitting its OOD record keeps
the identity; an export: the file's sha256), its preprocessing and test-time augmentation, the feature dimension
and imgclf's version; `similar` refuses an index whose model is not the one it queries with (`check_same_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import setup, world_from_env
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import join_labels
from imgclf.core.version import __version__
from imgclf.data.images import resize_shorter
from imgclf.data.sources import BUILTIN, find_split_dirs
from imgclf.infer.logits import open_model_data
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.infer.stream.inputs import Inputs
from imgclf.infer.stream.job import Job, check_output_place
from imgclf.infer.stream.rows import EMBEDDING_KEY, EmbeddingLayout
from imgclf.infer.stream.run import DEFAULT_TIMEOUT, predict_shares, summary

KIND = "imgclf-embeddings"  # the metadata's "kind": a file `similar` takes as an index
VERSION = 1
PART_ROWS = 2_000  # rows per part file: ~10 MB of float32 embeddings at dimension 1280 held before they are on disk
# what must be the same for an index and the model that queries it (`check_same_model`)
IDENTITY = ("model", "weights_sha256", "preprocess", "tta", "dim")
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class Entry:
    """One image to embed: its path (or an in-memory image's name, such as cifar10:test:7), label, split, and the
    in-memory image's pixels (H x W x 3 uint8) where it has no file."""

    path: str
    label: str | None = None
    split: str | None = None
    pixels: np.ndarray | None = None


class FileEntries:
    """Files, folders and --files-from as predict reads them (infer/stream/inputs.py), as entries without label
    or split."""

    def __init__(self, inputs: Inputs):
        self.inputs, self.paths, self.files_from = inputs, inputs.paths, inputs.files_from
        self.data = None

    def __iter__(self):
        return (Entry(p) for p in self.inputs)

    def check(self) -> None:
        if not self.paths and self.files_from is None:
            raise UsageError(
                "nothing to embed: give a data set (cifar10, a CSV, a folder with train/), image files "
                "or folders, or --files-from LIST"
            )
        self.inputs.check()

    def survey(self):
        return self.inputs.survey()


class SourceEntries:
    """Every image of a data set (`data`, as --data names it), split by split (train, val, test, then any other),
    each with its label and split; opened as the model's training opened it (`open_model_data`: its carved
    validation split and --apply-fixes when `data` is the data it was trained on)."""

    def __init__(self, data: str, config: dict, data_root: str | None = None):
        self.data, self.config, self.data_root = data, config, data_root
        self.paths, self.files_from, self._source = (data,), None, None

    @property
    def source(self):
        if self._source is None:
            self._source = open_model_data(self.config, self.data, "train", self.data_root)[0]
        return self._source

    def __iter__(self):
        src = self.source
        names = [s for s in SPLIT_ORDER if s in src.splits] + sorted(set(src.splits) - set(SPLIT_ORDER))
        for name in names:
            split = src.splits[name]
            for i in range(len(split)):
                pixels = split.arrays[i] if split.arrays is not None else None
                yield Entry(split.describe(i), join_labels(split.label_names(i, src.classes)), name, pixels)

    def check(self) -> None:
        self.source  # noqa: B018 - opening it is the check: a DataError line for data that cannot be used

    def survey(self):
        digest, n = hashlib.blake2b(digest_size=16), 0
        for e in self:
            digest.update(f"{e.path}\0{e.label}\0{e.split}\n".encode("utf-8", "surrogateescape"))
            n += 1
        if n == 0:
            raise UsageError(f"'{self.data}' holds no images")
        return n, digest.hexdigest()

    def record(self) -> dict:
        """Where the images are, for `similar`'s contact sheet (an in-memory image is found again by its name)."""
        return {"data": self.data, "data_root": self.data_root or self.config.get("data_root")}


def names_data(path: str, config) -> bool:
    """Whether one PATH names a data set (labels and splits) rather than images: a built-in set, a CSV manifest,
    a folder with a train/ split folder, or the data the model was trained on (`config()`: the model's training
    config, read only for a folder without split folders)."""
    if str(path).lower().replace("-", "").replace("_", "") in BUILTIN and not os.path.exists(path):
        return True
    if os.path.isfile(path):
        return path.lower().endswith(".csv")
    if not os.path.isdir(path):
        return False
    if "train" in find_split_dirs(Path(path)):
        return True
    own = config().get("data")
    return own is not None and os.path.abspath(own) == os.path.abspath(path)


def entries_for(weights, paths, files_from, data_root: str | None = None):
    """The entries of `embed`'s inputs (see the module's docstring)."""
    paths = [str(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    if len(paths) == 1 and files_from is None:
        known: list[dict] = []

        def config() -> dict:  # the run's data, split and fixes; the model file read once, on the CPU
            if not known:
                known.append(open_model(str(weights), device="cpu").config)
            return known[0]

        if names_data(paths[0], config):
            return SourceEntries(paths[0], config(), data_root)
    return FileEntries(Inputs(tuple(paths), None if files_from is None else str(files_from)))


class Embedder(Predictor):
    """A Predictor whose answers are features: each entry's {"path", "label", "split", "embedding"} (D float32,
    L2-normalised) or {"path", "label", "split", "error"}. Opening it runs the model once, which refuses (one line)
    a model file that gives no features and measures their dimension (`dim`)."""

    def __init__(self, weights, *, device="auto", batch_size=32, precision="auto", workers=None):
        super().__init__(str(weights), device=device, batch_size=batch_size, precision=precision, workers=workers)
        s = self.preprocess.img_size
        self.dim = int(self.runner.features(torch.zeros(1, 3, s, s)).shape[1])

    def _load(self, item) -> np.ndarray:
        if isinstance(item, Entry) and item.pixels is not None:
            p = self.preprocess
            return self.crop(np.asarray(resize_shorter(Image.fromarray(item.pixels), p.resize, p.interpolation)))
        return super()._load(item.path if isinstance(item, Entry) else item)

    def _results(self, chunk: list, loaded: list, k: int) -> list[dict]:
        ok = [t for t in loaded if isinstance(t, np.ndarray)]
        feats = self.runner.features(self.normalize(ok)).numpy().astype(np.float32) if ok else None
        results, j = [], 0
        for item, t in zip(chunk, loaded):
            e = item if isinstance(item, Entry) else Entry(str(item))
            row = {"path": e.path, "label": e.label, "split": e.split}
            if isinstance(t, np.ndarray):
                row["embedding"] = feats[j]
                j += 1
            else:
                row["error"] = t
            results.append(row)
        return results

    def embed(self, items) -> list[dict]:
        """The rows of `items` (paths or entries), in order."""
        return list(self.predict_iter(items, top_k=1))


def weights_digest(runner) -> tuple[str, str]:
    """(sha256, of what): a checkpoint's state-dict tensors (names, dtypes, shapes, bytes) in name order, so that
    `calibrate` or a refitted OOD record keep its identity; any other file's bytes."""
    h = hashlib.sha256()
    if isinstance(runner, CheckpointRunner):
        for name, t in sorted(runner.ckpt["state_dict"].items()):
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest(), "state_dict"
    with open(runner.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), "file"


def model_identity(embedder: Embedder) -> dict:
    """What made an embedding: the model, its weights' digest, preprocessing, TTA and feature dimension."""
    r = embedder.runner
    sha, of = weights_digest(r)
    return {
        "model": r.model_name,
        "format": r.format,
        "weights": os.path.abspath(r.path),
        "weights_sha256": sha,
        "weights_digest_of": of,
        "preprocess": r.preprocess.to_dict(),
        "tta": r.tta,
        "dim": embedder.dim,
    }


def index_metadata(identity: dict, entries) -> dict:
    """The Parquet file's schema metadata (under EMBEDDING_KEY)."""
    record = entries.record() if isinstance(entries, SourceEntries) else {"data": None, "data_root": None}
    return {
        "kind": KIND,
        "version": VERSION,
        **identity,
        "normalised": "L2",
        "distance": "sqrt(2 - 2 cos): the Euclidean distance of the normalised vectors",
        **record,
        "imgclf_version": __version__,
    }


def check_same_model(meta: dict, identity: dict, index: str, weights: str) -> None:
    """Refuse (one line) an index whose embeddings another model, weights, preprocessing or TTA made."""
    differ = [k for k in IDENTITY if meta.get(k) != identity.get(k)]
    if not differ:
        return
    what = {
        "model": f"model {meta.get('model')}, not {identity.get('model')}",
        "weights_sha256": f"weights {str(meta.get('weights_sha256'))[:12]} ({meta.get('weights')}), not "
        f"{str(identity.get('weights_sha256'))[:12]}",
        "preprocess": f"preprocessing {json.dumps(meta.get('preprocess'))}, not {json.dumps(identity.get('preprocess'))}",
        "tta": f"tta {meta.get('tta')}, not {identity.get('tta')}",
        "dim": f"{meta.get('dim')} features, not {identity.get('dim')}",
    }
    raise UsageError(
        f"--index '{index}' was embedded by another model than '{weights}' ({'; '.join(what[k] for k in differ)}): "
        "query it with the model that wrote it, or embed the images again with this one (imgclf embed)"
    )


class EmbedJob(Job):
    """A streaming `embed`: the Job of predict (infer/stream/job.py) with embed's manifest and rows; --resume
    refuses a stopped run that another model (by its weights' digest) or another command wrote."""

    COMMAND = "embed"
    SAME = (
        ("weights", "weights"),
        ("inputs", "DATA_OR_FILES"),
        ("files_from", "--files-from"),
        ("stdin", "--files-from -"),
        ("batch_size", "--batch-size"),
        ("world_size", "number of processes"),
    )

    @classmethod
    def for_embed(cls, weights, entries, out, *, batch_size: int, resume: bool, world) -> EmbedJob:
        if out is None:
            raise UsageError("embed needs --output FILE.parquet: the embeddings are written there")
        if not out.lower().endswith(".parquet"):
            raise UsageError(f"--output '{out}': embed writes Parquet: give a file name ending in .parquet")
        if world.distributed and entries.files_from == "-":
            raise UsageError("under torchrun every rank reads the list: give --files-from a file, not -")
        entries.check()
        check_output_place(out)
        count, digest = entries.survey()
        manifest = {
            "command": cls.COMMAND,
            "version": VERSION,
            "weights": os.path.abspath(str(weights)),
            "inputs": [p if isinstance(entries, SourceEntries) else os.path.abspath(p) for p in entries.paths],
            "files_from": None if entries.files_from in (None, "-") else os.path.abspath(entries.files_from),
            "stdin": entries.files_from == "-",
            "batch_size": batch_size,
            "world_size": world.size,
            "entries": count,
            "digest": digest,
        }
        job = cls(entries, out, "parquet", manifest, world, resume=False)
        job.resume = job._check_existing(resume)
        return job

    def use_layout(self, layout) -> None:
        """The model's identity recorded in the manifest too: a stopped run of other weights is not mixed in."""
        meta = json.loads(layout.meta)
        self.manifest["identity"] = {k: meta.get(k) for k in IDENTITY}
        super().use_layout(layout)
        if self.resume:
            with open(os.path.join(self.parts, "manifest.json"), encoding="utf-8") as f:
                before = json.load(f).get("identity")
            if before != self.manifest["identity"]:
                raise UsageError(
                    f"--resume: the stopped run in '{self.parts}' was embedded by other weights or preprocessing "
                    f"(the model file changed since): remove '{self.parts}' to start again"
                )


def embed(
    weights,
    inputs=(),
    output: str | None = None,
    *,
    files_from: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    data_root: str | None = None,
    resume: bool = False,
    part_rows: int = PART_ROWS,
    on_row=None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Write the L2-normalised penultimate features of every image of `inputs` to `output` (.parquet): see the
    module's docstring. `resume`: keep the rows a stopped run of the same call wrote and embed the rest.
    `on_row(row)`: called with each new row ({"path", "label", "split", "embedding"} or {..., "error"}) in this
    process. Under torchrun each rank embeds its share and rank 0 merges them. Returns {"output", "entries",
    "rows", "embedded", "errors", "resumed", "dim"} (counts over all ranks); with `resume` and a finished
    `output`, nothing is done: "finished": True."""
    if int(batch_size) < 1 or int(part_rows) < 1:
        raise UsageError(f"batch_size and part_rows must be at least 1, got {batch_size} and {part_rows}")
    world = world_from_env()
    entries = entries_for(weights, inputs, files_from, data_root)
    out = None if output is None else str(output)
    job = EmbedJob.for_embed(weights, entries, out, batch_size=int(batch_size), resume=resume, world=world)
    if job.finished:
        return {**renamed(summary(job, [(0, 0, 0, 0)])), "finished": True}
    with setup(resolve_device(device), timeout) as dev:
        embedder = Embedder(weights, device=str(dev), batch_size=int(batch_size), precision=precision, workers=workers)
        meta = index_metadata(model_identity(embedder), entries)
        layout = EmbeddingLayout(embedder.dim, json.dumps(meta))
        counts = predict_shares(job, embedder, top_k=1, part_rows=int(part_rows), on_row=on_row, layout=layout)
    return {**renamed(summary(job, counts)), "dim": embedder.dim}


def renamed(s: dict) -> dict:
    return {("embedded" if k == "predicted" else k): v for k, v in s.items()}


# ---------------------------------------------------------------------------------------------- reading it


@dataclass
class Embeddings:
    """An embedding file read back: its metadata, and the rows that have an embedding (`vectors`: N x D float32)."""

    meta: dict
    paths: list[str]
    labels: list[str | None]
    splits: list[str | None]
    vectors: np.ndarray


def read_metadata(path: str, flag: str = "--index") -> dict:
    """The metadata of an embedding file written by `embed`; one line for anything else."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet)

    if not os.path.isfile(path):
        raise UsageError(f"{flag} '{path}' not found: give a file written by imgclf embed (emb.parquet)")
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise UsageError(
            f"{flag} '{path}' is not a Parquet file ({str(e).splitlines()[0][:120]}): give a file "
            "written by imgclf embed"
        ) from None
    raw = (schema.metadata or {}).get(EMBEDDING_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != KIND or "embedding" not in schema.names:
        raise UsageError(
            f"{flag} '{path}' was not written by imgclf embed (no embeddings and no record of the "
            "model that made them): write one with imgclf embed WEIGHTS DATA --output FILE.parquet"
        )
    return meta


def read_embeddings(path: str, flag: str = "--index") -> Embeddings:
    """The rows of an embedding file that have an embedding (unreadable images' rows left out)."""
    import pyarrow.compute as pc  # noqa: PLC0415 - optional package (Parquet)
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet)

    meta = read_metadata(path, flag)
    table = pq.read_table(path, columns=["path", "label", "split", "embedding"])
    table = table.filter(pc.is_valid(table["embedding"]))
    dim = int(meta["dim"])
    flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)
    cols = {c: table[c].to_pylist() for c in ("path", "label", "split")}
    return Embeddings(meta, cols["path"], cols["label"], cols["split"], vectors)
