"""Batch prediction that scales: millions of files in bounded memory, written as it goes, resumable, sharded.

    imgclf predict best.pt photos/ --files-from list.txt --output preds.parquet [--resume]
    torchrun --standalone --nproc-per-node 2 -m imgclf predict best.pt --files-from list.txt --output preds.parquet

The inputs are one stream: the PATHs (folders walked lazily, in sorted order), then the lines of --files-from.
It is cut into chunks of `batch_size` consecutive entries; chunk i belongs to rank i % world, so every image is
computed in exactly the batch it would be in one process (the same values, bit for bit, on the same machine).

Each rank appends its rows, chunk by chunk, to its own work file in OUTPUT.parts/ (CSV and JSON lines: one file,
flushed per chunk; Parquet: a part file every `part_rows` rows, each written whole). Nothing is kept per result:
memory is two batches and one part. At the end rank 0 merges the ranks' rows in chunk order into OUTPUT (written
under a temporary name and renamed) and removes OUTPUT.parts. A run that is killed leaves OUTPUT.parts behind;
`resume=True` keeps the whole chunks there (a half-written last line is dropped) and predicts the rest, so every
path appears once. OUTPUT.parts/manifest.json records the command, so that a different one is not mixed in.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass

from imgclf.compute.distributed import World, barrier, gather, setup, world_from_env
from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open, remove_stale_temps, write_json
from imgclf.core.progress import progress, shown
from imgclf.infer.predict import Predictor, iter_paths

log = logging.getLogger(__name__)

# Seconds a rank waits for the others at the end (all ranks' shards finished before rank 0 merges); the shards
# differ by at most one batch, so this only runs out when a rank is stuck, and torchrun stops the others itself
# when a rank dies.
DEFAULT_TIMEOUT = 1800.0
PART_ROWS = 10_000  # Parquet rows per part file: ~1 MB of results held at most before they are on disk
LOG_EVERY = 1000  # images between progress lines when stderr is not a terminal
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: the rows gained "unsure" (--min-confidence); a stopped run of another version is refused

# -------------------------------------------------------------------------------------------------- inputs


def read_list(f):
    """The entries of a file list: one path per line; blank lines and lines starting with # skipped."""
    for line in f:
        line = line.rstrip("\r\n")
        if line.strip() and not line.startswith("#"):
            yield line


@dataclass(frozen=True)
class Inputs:
    """The entries to predict, in order: `paths` (files, and folders walked recursively), then the lines of
    `files_from` ('-': standard input). Iterating reads them lazily."""

    paths: tuple[str, ...] = ()
    files_from: str | None = None

    def __iter__(self):
        yield from iter_paths(self.paths)
        if self.files_from == "-":
            yield from read_list(sys.stdin)
        elif self.files_from is not None:
            with open(self.files_from, encoding="utf-8") as f:
                yield from read_list(f)

    def check(self) -> None:
        """Refuse, before any work, what cannot be read at all."""
        if not self.paths and self.files_from is None:
            raise UsageError("nothing to predict: give image files or folders, or --files-from LIST")
        if self.files_from is None or self.files_from == "-":
            return
        if not os.path.exists(self.files_from):
            raise UsageError(
                f"--files-from '{self.files_from}' not found: give a text file with one image path per line "
                "(or - to read them from standard input)"
            )
        if os.path.isdir(self.files_from):
            raise UsageError(f"--files-from '{self.files_from}' is a folder: give a text file, one image path a line")

    def survey(self) -> tuple[int | None, str | None]:
        """(entries, a digest of them) in one cheap pass that reads names only, checking every path and folder
        on the way; (None, None) when the list comes from standard input, which can be read only once."""
        self.check()
        if self.files_from == "-":
            for _ in iter_paths(self.paths):  # still checked up front
                pass
            return None, None
        digest, n = hashlib.blake2b(digest_size=16), 0
        try:
            for entry in self:
                digest.update(entry.encode("utf-8", "surrogateescape") + b"\0")
                n += 1
        except UnicodeDecodeError as e:
            raise UsageError(f"--files-from '{self.files_from}' is not UTF-8 text ({e.reason}): convert it") from None
        except OSError as e:
            raise UsageError(f"cannot read --files-from '{self.files_from}': {e.strerror or e}") from None
        if n == 0:
            raise UsageError(f"--files-from '{self.files_from}' names no images (blank and # lines are skipped)")
        return n, digest.hexdigest()


def shard(entries, batch_size: int, world: World):
    """This rank's entries: chunk i (entries i*batch_size ... (i+1)*batch_size - 1) goes to rank i % world."""
    if world.size == 1:
        return iter(entries)
    return (e for n, e in enumerate(entries) if (n // batch_size) % world.size == world.rank)


def shard_rows(total: int, batch_size: int, world: World, rank: int | None = None) -> int:
    """How many of `total` entries rank `rank` (this one by default) predicts."""
    rank = world.rank if rank is None else rank
    chunks = -(-total // batch_size)
    mine = len(range(rank, chunks, world.size))
    last_is_mine = chunks > 0 and (chunks - 1) % world.size == rank
    return mine * batch_size - ((chunks * batch_size - total) if last_is_mine else 0)


# -------------------------------------------------------------------------------------------------- row encodings


def csv_row(r: dict) -> list:
    if "error" in r:
        return [r["path"], "", "", "", "", "", r["error"], ""]
    tk = r["top_k"]
    return [
        r["path"],
        "" if r["label"] is None else r["label"],
        r["index"],
        repr(r["probability"]),
        json.dumps([t["label"] for t in tk], ensure_ascii=False),
        json.dumps([t["probability"] for t in tk]),
        "",
        "" if "unsure" not in r else str(r["unsure"]).lower(),
    ]


# unsure: true / false with --min-confidence (label then empty where true), empty without it
CSV_HEADER = ["path", "label", "index", "probability", "top_k_labels", "top_k_probabilities", "error", "unsure"]


def _parquet_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("index", pa.int32()),
            ("probability", pa.float32()),
            ("top_k_labels", pa.list_(pa.string())),
            ("top_k_probabilities", pa.list_(pa.float32())),
            ("error", pa.string()),
            ("unsure", pa.bool_()),
        ]
    )


def parquet_table(rows: list[dict]):
    import pyarrow as pa

    ok = ["error" not in r for r in rows]
    cols = {
        "path": [r["path"] for r in rows],
        "label": [r["label"] if good else None for r, good in zip(rows, ok)],
        "index": [r["index"] if good else None for r, good in zip(rows, ok)],
        "probability": [r["probability"] if good else None for r, good in zip(rows, ok)],
        "top_k_labels": [[t["label"] for t in r["top_k"]] if good else None for r, good in zip(rows, ok)],
        "top_k_probabilities": [[t["probability"] for t in r["top_k"]] if good else None for r, good in zip(rows, ok)],
        "error": [r.get("error") for r in rows],
        "unsure": [r.get("unsure") for r in rows],
    }
    return pa.table(cols, schema=_parquet_schema())


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _json_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8", "surrogateescape")


def records(f, quoted: bool):
    """The complete records of a CSV (`quoted`: a record ends where its quotes balance, so a path holding a
    newline stays one record) or JSON-lines file opened in binary; a last line without its newline is one a kill
    cut short, and is left out."""
    rec = b""
    for line in f:
        if not line.endswith(b"\n"):
            return
        rec += line
        if quoted and rec.count(b'"') % 2:
            continue
        yield rec
        rec = b""


# -------------------------------------------------------------------------------------------------- work files


class LineWork:
    """One rank's rows as CSV or JSON lines in OUTPUT.parts/rank-R.EXT, appended a chunk at a time and flushed."""

    def __init__(self, folder: str, rank: int, quoted: bool):
        self.quoted = quoted
        self.path = os.path.join(folder, f"rank-{rank:03d}" + (".csv" if quoted else ".jsonl"))
        self.header = _csv_bytes([CSV_HEADER]) if quoted else b""
        self.rows, self.f = 0, None

    def keep_whole_chunks(self, batch_size: int) -> int:
        """Resume: cut the file after its last whole chunk; the rows kept."""
        keep_bytes = keep_rows = 0
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                recs = records(f, self.quoted)
                if not self.header or next(recs, None) == self.header:  # else: killed before its header was whole
                    keep_bytes = offset = len(self.header)
                    for n, rec in enumerate(recs, start=1):
                        offset += len(rec)
                        if n % batch_size == 0:
                            keep_bytes, keep_rows = offset, n
            os.truncate(self.path, keep_bytes)
        self.rows = keep_rows
        return keep_rows

    def open(self) -> None:
        self.f = open(self.path, "ab")
        if self.f.tell() == 0:
            self.f.write(self.header)

    def add_chunk(self, rows: list[dict]) -> None:
        self.f.write(_csv_bytes(csv_row(r) for r in rows) if self.quoted else _json_bytes(rows))
        self.f.flush()  # a kill now loses at most the chunk being written
        self.rows += len(rows)

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None


class ParquetWork:
    """One rank's rows as Parquet part files OUTPUT.parts/part-RRR-NNNNNN.parquet, each written whole (a Parquet
    file is readable only once its footer is written) when `part_rows` rows are waiting, and at the end."""

    def __init__(self, folder: str, rank: int, part_rows: int):
        self.folder, self.rank, self.part_rows = folder, rank, part_rows
        self.rows, self.pending, self.pending_rows = 0, [], 0

    def parts(self) -> list[str]:
        return parquet_parts(self.folder, self.rank)

    def keep_whole_chunks(self, batch_size: int) -> int:
        import pyarrow.parquet as pq

        # every part holds whole chunks (the one short chunk ends the input), so all of them are kept
        self.rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts())
        return self.rows

    def open(self) -> None:
        parts = self.parts()
        self.seq = int(parts[-1].rsplit("-", 1)[1].split(".")[0]) + 1 if parts else 0

    def add_chunk(self, rows: list[dict]) -> None:
        self.pending.append(parquet_table(rows))  # columns: ~100 bytes a row, not a dict per row
        self.pending_rows += len(rows)
        self.rows += len(rows)
        if self.pending_rows >= self.part_rows:
            self._write_part()

    def _write_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        path = os.path.join(self.folder, f"part-{self.rank:03d}-{self.seq:06d}.parquet")
        with atomic_open(path, "wb") as f:
            pq.write_table(pa.concat_tables(self.pending), f)
        self.seq += 1
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self._write_part()


def parquet_parts(folder: str, rank: int) -> list[str]:
    head = f"part-{rank:03d}-"
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(head) and n.endswith(".parquet"))


class NoWork:
    """No --output: the rows go to `on_row` only."""

    rows = 0

    def keep_whole_chunks(self, batch_size: int) -> int:
        return 0

    def open(self) -> None:
        pass

    def add_chunk(self, rows: list[dict]) -> None:
        self.rows += len(rows)

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------------------- merging


class LineReader:
    def __init__(self, path: str, quoted: bool):
        self.f = open(path, "rb")
        self.recs = records(self.f, quoted)
        if quoted:
            next(self.recs, None)  # the header

    def take(self, n: int) -> list[bytes]:
        return list(itertools.islice(self.recs, n))

    def close(self) -> None:
        self.f.close()


class ParquetReader:
    """A rank's parts as one stream of rows, one part in memory at a time."""

    def __init__(self, parts: list[str]):
        self.parts, self.table, self.at = iter(parts), None, 0

    def take(self, n: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pieces, want = [], n
        while want > 0:
            if self.table is None or self.at >= self.table.num_rows:
                path = next(self.parts, None)
                if path is None:
                    break
                self.table, self.at = pq.read_table(path), 0
                continue
            piece = self.table.slice(self.at, want)
            self.at += piece.num_rows
            want -= piece.num_rows
            pieces.append(piece)
        return pa.concat_tables(pieces) if pieces else _parquet_schema().empty_table()

    def close(self) -> None:
        self.table = None


def _count(piece) -> int:
    return piece.num_rows if hasattr(piece, "num_rows") else len(piece)


@contextlib.contextmanager
def _final_writer(out: str, kind: str, part_rows: int):
    """A function that takes the merged rows piece by piece and writes OUTPUT under a temporary name; the file
    is renamed into place when the block ends without an error."""
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_open(out, "wb") as f, pq.ParquetWriter(f, _parquet_schema()) as w:
            group, rows = [], [0]  # row groups of about part_rows rows, not one per chunk

            def write(piece):
                group.append(piece)
                rows[0] += piece.num_rows
                if rows[0] >= part_rows:
                    w.write_table(pa.concat_tables(group))
                    group.clear()
                    rows[0] = 0

            yield write
            if group:
                w.write_table(pa.concat_tables(group))
        return
    with atomic_open(out, "wb") as f:
        first = [True]

        def write(recs):
            for rec in recs:
                if kind == "json":  # JSON lines into one array, an object a line
                    f.write((b"[\n" if first[0] else b",\n") + rec.rstrip(b"\n"))
                else:
                    f.write(rec)
                first[0] = False

        if kind == "csv":
            f.write(_csv_bytes([CSV_HEADER]))
        yield write
        if kind == "json":
            f.write(b"[]\n" if first[0] else b"\n]\n")


def chunk_order(sizes: list[int], batch_size: int):
    """(rank, rows) for each chunk in input order, given how many rows each rank holds."""
    total, world = sum(sizes), len(sizes)
    want = [shard_rows(total, batch_size, World(size=world), r) for r in range(world)]
    if want != list(sizes):
        raise RuntimeError(f"the ranks hold {sizes} rows, not {want}: the parts do not fit together")
    for c in range(-(-total // batch_size)):
        yield c % world, min(batch_size, total - c * batch_size)


def merge(folder: str, kind: str, sizes: list[int], batch_size: int, out: str, *, part_rows: int) -> None:
    """The ranks' rows in OUTPUT.parts/, in input order, into OUTPUT (written whole, then renamed)."""
    if kind == "parquet":
        readers = [ParquetReader(parquet_parts(folder, r)) for r in range(len(sizes))]
    else:
        readers = [LineReader(LineWork(folder, r, kind == "csv").path, kind == "csv") for r in range(len(sizes))]
    try:
        with _final_writer(out, kind, part_rows) as write:
            for rank, n in chunk_order(sizes, batch_size):
                piece = readers[rank].take(n)
                if _count(piece) != n:
                    raise RuntimeError(f"the rows of rank {rank} in {folder} end early: run the command again")
                write(piece)
    finally:
        for r in readers:
            r.close()


# -------------------------------------------------------------------------------------------------- the job

KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def output_kind(out: str) -> str:
    kind = KINDS.get(os.path.splitext(out)[1].lower())
    if kind is None:
        raise UsageError(f"--output '{out}' must end in .csv or .json (an array), .jsonl (JSON lines) or .parquet")
    return kind


@dataclass
class Job:
    """What one `predict_files` call will do, checked before any work: where the rows go and what to resume."""

    inputs: Inputs
    out: str | None
    kind: str | None
    manifest: dict
    world: World
    resume: bool  # an earlier run's rows are in `parts` and are kept

    @property
    def parts(self) -> str:
        return self.out + ".parts"

    @classmethod
    def plan(
        cls, weights, inputs: Inputs, out, *, batch_size, top_k, resume, world, tta=None, min_confidence=None
    ) -> Job:
        if int(top_k) < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        if world.distributed and out is None:
            raise UsageError("under torchrun predict needs --output FILE: each rank writes its share into it")
        if world.distributed and inputs.files_from == "-":
            raise UsageError("under torchrun every rank reads the list: give --files-from a file, not -")
        if out is None and resume:
            raise UsageError("--resume continues an --output file: give the same --output as the run to resume")
        kind = output_kind(out) if out is not None else None
        inputs.check()
        if out is not None:
            _check_output_place(out)
        entries, digest = inputs.survey()
        weights_name = weights if isinstance(weights, str | os.PathLike) else getattr(weights.runner, "path", "")
        manifest = {
            "version": MANIFEST_VERSION,
            "weights": os.path.abspath(str(weights_name)),
            "inputs": [os.path.abspath(p) for p in inputs.paths],
            "files_from": None if inputs.files_from in (None, "-") else os.path.abspath(inputs.files_from),
            "stdin": inputs.files_from == "-",
            "batch_size": batch_size,
            "top_k": int(top_k),
            "tta": tta,
            "min_confidence": min_confidence,
            "world_size": world.size,
            "entries": entries,
            "digest": digest,
        }
        job = cls(inputs, out, kind, manifest, world, resume=False)
        if out is not None:
            job.resume = job._check_existing(resume)
        return job

    def _check_existing(self, resume: bool) -> bool:
        """Whether there is a stopped run to continue; refuses what cannot be continued or would be lost."""
        out, parts = self.out, self.parts
        if not resume:
            if os.path.exists(parts):
                raise UsageError(
                    f"'{parts}' holds the rows of an earlier run that was stopped: pass --resume to continue it, "
                    f"or remove it{' and ' + repr(out) if os.path.exists(out) else ''} to start again"
                )
            if os.path.exists(out):
                raise UsageError(f"--output '{out}' exists: remove it, or write to another file")
            return False
        if not os.path.exists(parts):
            if os.path.exists(out):
                raise UsageError(
                    f"--resume: '{out}' is finished (there is no '{parts}' of a stopped run): remove it to predict again"
                )
            log.info("nothing to resume in %s: starting from the first image", parts)
            return False
        self._check_manifest()
        return True

    def _check_manifest(self) -> None:
        parts = self.parts
        try:
            with open(os.path.join(parts, MANIFEST), encoding="utf-8") as f:
                before = json.load(f)
        except (OSError, ValueError):
            raise UsageError(
                f"--resume: '{parts}' is not a stopped imgclf predict run (no {MANIFEST}): remove it"
            ) from None
        now = self.manifest
        if before.get("version") != now["version"]:
            raise UsageError(
                f"--resume: '{parts}' was written by another version of imgclf predict (its rows have other "
                f"columns: work files version {before.get('version')}, this one {now['version']}): remove it to start again"
            )
        for key, what in (
            ("weights", "weights"),
            ("inputs", "PATHs"),
            ("files_from", "--files-from"),
            ("stdin", "--files-from -"),
            ("batch_size", "--batch-size"),
            ("top_k", "--top-k"),
            ("tta", "--tta"),
            ("min_confidence", "--min-confidence"),
            ("world_size", "number of processes"),
        ):
            if before.get(key) != now[key]:
                raise UsageError(
                    f"--resume: the stopped run in '{parts}' had {what} {before.get(key)}, this one {now[key]}: "
                    f"resume with the same command, or remove '{parts}' to start again"
                )
        if before.get("digest") != now["digest"]:
            raise UsageError(
                f"--resume: the images listed changed since the run in '{parts}' ({before.get('entries')} entries "
                f"then, {now['entries']} now): resume with the same list, or remove '{parts}' to start again"
            )

    def prepare(self) -> None:
        """Rank 0, after every rank has passed `plan`: the work folder and its manifest."""
        if self.out is None:
            return
        os.makedirs(self.parts, exist_ok=True)
        remove_stale_temps(self.parts)
        if not self.resume:
            write_json(self.manifest, os.path.join(self.parts, MANIFEST))

    def work(self, part_rows: int):
        if self.out is None:
            return NoWork()
        if self.kind == "parquet":
            return ParquetWork(self.parts, self.world.rank, part_rows)
        return LineWork(self.parts, self.world.rank, quoted=self.kind == "csv")

    def finish(self, work, sizes: list[int], *, part_rows: int, partial: bool = False) -> None:
        """Rank 0: OUTPUT from the ranks' rows; the work folder removed unless the run is `partial` (stopped)."""
        batch_size = self.manifest["batch_size"]
        if isinstance(work, LineWork) and self.kind != "json" and len(sizes) == 1 and not partial:
            os.replace(work.path, self.out)  # already in order and flushed to disk: no copy of a big file
        else:
            merge(self.parts, self.kind, sizes, batch_size, self.out, part_rows=part_rows)
        if not partial:
            shutil.rmtree(self.parts)


def _check_output_place(out: str) -> None:
    from imgclf.core.options import check_output_folder

    if os.path.isdir(out):
        raise UsageError(f"--output '{out}' is a folder: give a file name")
    check_output_folder(os.path.dirname(os.path.abspath(out)), "--output")


# -------------------------------------------------------------------------------------------------- the API


def predict_files(
    weights,
    inputs=(),
    output: str | None = None,
    *,
    files_from: str | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    part_rows: int = PART_ROWS,
    on_row=None,
    timeout: float = DEFAULT_TIMEOUT,
    tta: str | None = None,
    min_confidence: float | None = None,
) -> dict:
    """Predict every image of `inputs` (files and folders) and of the list `files_from`, writing each batch's rows
    to `output` (.csv, .jsonl, .json or .parquet) as it finishes; see the module's docstring.

    `weights`: a checkpoint or exported model (or a Predictor). `resume`: keep the rows a stopped run of the same
    call wrote and predict the rest. `on_row(result)`: called with each new result (the dicts of
    Predictor.predict) in this process. Under torchrun each rank predicts its share and rank 0 merges them.
    `tta`, `min_confidence`: as Predictor's (a Predictor passed as `weights` keeps its own).
    Returns {"output", "entries", "rows", "predicted", "errors", "resumed"}; the counts are over all ranks."""
    from imgclf.compute.device import resolve_device
    from imgclf.infer.predict import check_min_confidence
    from imgclf.models.tta import check_mode

    tta, min_confidence = check_mode(tta), check_min_confidence(min_confidence)  # before any work
    world = world_from_env()
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    inp = Inputs(tuple(str(p) for p in inputs), None if files_from is None else str(files_from))
    out = None if output is None else str(output)
    if int(batch_size) < 1 or int(part_rows) < 1:
        raise UsageError(f"batch_size and part_rows must be at least 1, got {batch_size} and {part_rows}")
    job = Job.plan(
        weights,
        inp,
        out,
        batch_size=int(batch_size),
        top_k=top_k,
        resume=resume,
        world=world,
        tta=tta,
        min_confidence=min_confidence,
    )
    with setup(resolve_device(device), timeout) as dev:
        if isinstance(weights, Predictor):
            predictor = copy.copy(weights)  # the caller's keeps its batch size
            predictor.batch_size = int(batch_size)
        else:
            predictor = Predictor(
                str(weights),
                device=str(dev),
                batch_size=int(batch_size),
                precision=precision,
                workers=workers,
                tta=tta,
                min_confidence=min_confidence,
            )
        barrier(world)  # every rank has checked the output before rank 0 creates anything
        if world.main:
            job.prepare()
        barrier(world)
        with contextlib.nullcontext() if world.main else shown(False):  # one bar, rank 0's
            work, done = _predict_share(job, predictor, top_k=top_k, part_rows=int(part_rows), on_row=on_row)
        counts = gather((work.rows, done["predicted"], done["errors"], done["resumed"]), world)
        if world.main and out is not None:
            job.finish(work, [c[0] for c in counts], part_rows=int(part_rows))
        barrier(world)  # no rank reports success before the merged file is there
    rows, predicted, errors, resumed = (sum(c[i] for c in counts) for i in range(4))
    if out is not None and not rows:
        log.warning("no image paths came in: %s has no rows", out)
    return {
        "output": out,
        "entries": job.manifest["entries"],
        "rows": rows,
        "predicted": predicted,
        "errors": errors,
        "resumed": resumed,
    }


def _predict_share(job: Job, predictor: Predictor, *, top_k: int, part_rows: int, on_row) -> tuple[object, dict]:
    """This rank's share, appended to its work file chunk by chunk; (the work, the counts)."""
    batch_size, world = job.manifest["batch_size"], job.world
    work = job.work(part_rows)
    kept = work.keep_whole_chunks(batch_size)
    if kept:
        log.info(
            "resuming %s: %d rows kept from the stopped run%s",
            job.out,
            kept,
            f" (rank {world.rank})" if world.distributed else "",
        )
    work.open()
    entries = job.manifest["entries"]
    todo = None if entries is None else shard_rows(entries, batch_size, world) - kept
    done = {"predicted": 0, "errors": 0, "resumed": kept}
    mine = itertools.islice(shard(job.inputs, batch_size, world), kept, None)
    desc = "predict" + (f" (rank 0 of {world.size})" if world.distributed else "")
    chunk: list[dict] = []
    try:
        rows = predictor.predict_iter(mine, top_k=top_k)
        for r in progress(rows, total=todo, desc=desc, unit="img", log_every=LOG_EVERY):
            chunk.append(r)
            done["predicted"] += 1
            done["errors"] += "error" in r
            if on_row is not None:
                on_row(r)
            if len(chunk) == batch_size:
                work.add_chunk(chunk)
                chunk = []
        if chunk:  # the input's last, short chunk
            work.add_chunk(chunk)
        work.close()
    except BaseException:
        _stopped(job, work, part_rows)
        raise
    return work, done


def _stopped(job: Job, work, part_rows: int) -> None:
    """An error, Ctrl-C or SIGTERM stopped the run: keep the whole chunks done, in OUTPUT.parts for --resume and,
    in one process, as OUTPUT too (what was done is usable now)."""
    try:
        work.close()
    except Exception as e:  # the error that stopped the run is the one to report
        log.debug("closing the rows of the stopped run: %s", e)
    if job.out is None or not work.rows:
        return
    entries = job.manifest["entries"]
    of = f" of {shard_rows(entries, job.manifest['batch_size'], job.world)}" if entries is not None else ""
    where = job.parts
    if not job.world.distributed:
        try:
            job.finish(work, [work.rows], part_rows=part_rows, partial=True)
            where = job.out
        except Exception as e:
            log.debug("writing %s from the stopped run: %s", job.out, e)
    log.warning(
        "stopped after %d%s images%s: %s holds those %d; run the same command with --resume to predict the rest",
        work.rows,
        of,
        f" (rank {job.world.rank})" if job.world.distributed else "",
        where,
        work.rows,
    )
