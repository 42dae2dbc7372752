"""One rank's rows on disk while a run goes on, in OUTPUT.parts/: appended a chunk at a time, and on --resume cut
back to the whole chunks a stopped run wrote (`keep_whole_chunks`). `NoWork`: no --output, the rows go to `on_row`
only."""

from __future__ import annotations

import os

from imgclf.core.fileio import atomic_open
from imgclf.infer.stream.rows import SINGLE_LAYOUT, Layout, csv_bytes, json_bytes, records


class LineWork:
    """One rank's rows as CSV or JSON lines in OUTPUT.parts/rank-R.EXT, appended a chunk at a time and flushed."""

    def __init__(self, folder: str, rank: int, quoted: bool, layout: Layout = SINGLE_LAYOUT):
        self.quoted, self.layout = quoted, layout
        self.path = os.path.join(folder, f"rank-{rank:03d}" + (".csv" if quoted else ".jsonl"))
        self.header = csv_bytes([layout.header]) if quoted else b""
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
        self.f.write(csv_bytes(self.layout.csv_row(r) for r in rows) if self.quoted else json_bytes(rows))
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

    def __init__(self, folder: str, rank: int, part_rows: int, layout: Layout = SINGLE_LAYOUT):
        self.folder, self.rank, self.part_rows, self.layout = folder, rank, part_rows, layout
        self.rows, self.pending, self.pending_rows = 0, [], 0

    def parts(self) -> list[str]:
        return parquet_parts(self.folder, self.rank)

    def keep_whole_chunks(self, batch_size: int) -> int:
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet output only)

        # every part holds whole chunks (the one short chunk ends the input), so all of them are kept
        self.rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts())
        return self.rows

    def open(self) -> None:
        parts = self.parts()
        self.seq = int(parts[-1].rsplit("-", 1)[1].split(".")[0]) + 1 if parts else 0

    def add_chunk(self, rows: list[dict]) -> None:
        self.pending.append(self.layout.table(rows))  # columns: ~100 bytes a row, not a dict per row
        self.pending_rows += len(rows)
        self.rows += len(rows)
        if self.pending_rows >= self.part_rows:
            self._write_part()

    def _write_part(self) -> None:
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional package (Parquet output only)

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
