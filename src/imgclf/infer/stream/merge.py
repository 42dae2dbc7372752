"""The ranks' rows in OUTPUT.parts/, in input order, into OUTPUT: read a chunk at a time from each rank's work
files, written whole under a temporary name and renamed."""

from __future__ import annotations

import contextlib
import itertools

from imgclf.compute.distributed import World
from imgclf.core.fileio import atomic_open
from imgclf.infer.stream.inputs import shard_rows
from imgclf.infer.stream.rows import SINGLE_LAYOUT, Layout, csv_bytes, records
from imgclf.infer.stream.work import LineWork, parquet_parts


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

    def __init__(self, parts: list[str], layout: Layout = SINGLE_LAYOUT):
        self.parts, self.table, self.at, self.layout = iter(parts), None, 0, layout

    def take(self, n: int):
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet output only)

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
        return pa.concat_tables(pieces) if pieces else self.layout.schema().empty_table()

    def close(self) -> None:
        self.table = None


def count(piece) -> int:
    return piece.num_rows if hasattr(piece, "num_rows") else len(piece)


class ParquetOutput:
    """OUTPUT as Parquet: the merged pieces (Arrow tables) in row groups of about `part_rows` rows, not one per
    chunk."""

    def __init__(self, writer, part_rows: int):
        self.writer, self.part_rows = writer, part_rows
        self.group, self.rows = [], 0

    def write(self, piece) -> None:
        self.group.append(piece)
        self.rows += piece.num_rows
        if self.rows >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

        if self.group:
            self.writer.write_table(pa.concat_tables(self.group))
        self.group, self.rows = [], 0


class LineOutput:
    """OUTPUT as CSV (its header, then the records), JSON lines, or JSON (the lines as one array, an object a
    line): the merged pieces are lists of records."""

    def __init__(self, f, kind: str, layout: Layout = SINGLE_LAYOUT):
        self.f, self.kind, self.first = f, kind, True
        if kind == "csv":
            f.write(csv_bytes([layout.header]))

    def write(self, recs) -> None:
        for rec in recs:
            if self.kind == "json":
                self.f.write((b"[\n" if self.first else b",\n") + rec.rstrip(b"\n"))
            else:
                self.f.write(rec)
            self.first = False

    def end(self) -> None:
        if self.kind == "json":
            self.f.write(b"[]\n" if self.first else b"\n]\n")


@contextlib.contextmanager
def final_output(out: str, kind: str, part_rows: int, layout: Layout = SINGLE_LAYOUT):
    """An output (`write(piece)`) that writes the merged rows piece by piece to OUTPUT under a temporary name;
    the file is renamed into place when the block ends without an error."""
    with atomic_open(out, "wb") as f:
        if kind == "parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet output only)

            with pq.ParquetWriter(f, layout.schema()) as w:
                output = ParquetOutput(w, part_rows)
                yield output
                output.flush()
        else:
            output = LineOutput(f, kind, layout)
            yield output
            output.end()


def chunk_order(sizes: list[int], batch_size: int):
    """(rank, rows) for each chunk in input order, given how many rows each rank holds."""
    total, world = sum(sizes), len(sizes)
    want = [shard_rows(total, batch_size, World(size=world), r) for r in range(world)]
    if want != list(sizes):
        raise RuntimeError(f"the ranks hold {sizes} rows, not {want}: the parts do not fit together")
    for c in range(-(-total // batch_size)):
        yield c % world, min(batch_size, total - c * batch_size)


def merge(
    folder: str,
    kind: str,
    sizes: list[int],
    batch_size: int,
    out: str,
    *,
    part_rows: int,
    layout: Layout = SINGLE_LAYOUT,
) -> None:
    """The ranks' rows in OUTPUT.parts/, in input order, into OUTPUT (written whole, then renamed); `layout`: the
    model's columns (rows.py)."""
    if kind == "parquet":
        readers = [ParquetReader(parquet_parts(folder, r), layout) for r in range(len(sizes))]
    else:
        readers = [LineReader(LineWork(folder, r, kind == "csv").path, kind == "csv") for r in range(len(sizes))]
    try:
        with final_output(out, kind, part_rows, layout) as output:
            for rank, n in chunk_order(sizes, batch_size):
                piece = readers[rank].take(n)
                if count(piece) != n:
                    raise RuntimeError(f"the rows of rank {rank} in {folder} end early: run the command again")
                output.write(piece)
    finally:
        for r in readers:
            r.close()
