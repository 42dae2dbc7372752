"""One result as a row of each output: CSV (`csv_row`, CSV_HEADER), JSON lines, Parquet (`Layout.table`), and the
complete records of a CSV or JSON-lines work file (`records`: a line a kill cut short is left out).

A multi-label model's rows have other columns (`Layout`, `layout_for`): path, labels (the set: a CSV cell "a|b",
a list in Parquet), one score per label (CSV: a column `score_LABEL` each; Parquet: a struct `scores`) and error.
JSON lines and JSON hold the results as they are ({"path", "labels", "scores"}).

With `--reject ood` (`Layout.ood`) the rows of either kind end with four more columns: unknown (true / false; an
unknown image's label, or label set, is empty), ood_score (the score's name), ood_value and ood_threshold; JSON
lines and JSON hold the results' own "unknown" and "ood" ({"score", "value", "threshold"}).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np

from imgclf.core.escape import csv_cell
from imgclf.core.multilabel import MULTILABEL, join_labels


def csv_row(r: dict) -> list:
    """The CSV row of one result; the path, label and error (a user's strings) as cells no spreadsheet runs as
    a formula (`csv_cell`); the top-k labels are a JSON list (it starts with `[`)."""
    if "error" in r:
        return [csv_cell(r["path"]), "", "", "", "", "", csv_cell(r["error"]), ""]
    tk = r["top_k"]
    return [
        csv_cell(r["path"]),
        "" if r["label"] is None else csv_cell(r["label"]),
        r["index"],
        repr(r["probability"]),
        json.dumps([t["label"] for t in tk], ensure_ascii=False),
        json.dumps([t["probability"] for t in tk]),
        "",
        "" if "unsure" not in r else str(r["unsure"]).lower(),
    ]


# unsure: true / false with --min-confidence (label then empty where true), empty without it
CSV_HEADER = ["path", "label", "index", "probability", "top_k_labels", "top_k_probabilities", "error", "unsure"]


def parquet_schema():
    import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

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


def parquet_columns(rows: list[dict]) -> dict:
    """A single-label model's Parquet columns of `rows`, by name."""
    ok = ["error" not in r for r in rows]
    return {
        "path": [r["path"] for r in rows],
        "label": [r["label"] if good else None for r, good in zip(rows, ok)],
        "index": [r["index"] if good else None for r, good in zip(rows, ok)],
        "probability": [r["probability"] if good else None for r, good in zip(rows, ok)],
        "top_k_labels": [[t["label"] for t in r["top_k"]] if good else None for r, good in zip(rows, ok)],
        "top_k_probabilities": [[t["probability"] for t in r["top_k"]] if good else None for r, good in zip(rows, ok)],
        "error": [r.get("error") for r in rows],
        "unsure": [r.get("unsure") for r in rows],
    }


# --reject ood: the columns after a row's own (either kind); unknown true / false, the label (set) empty where true
OOD_HEADER = ["unknown", "ood_score", "ood_value", "ood_threshold"]


def ood_cells(r: dict) -> list:
    """The OOD_HEADER cells of one result (empty for an error row)."""
    if "error" in r:
        return ["", "", "", ""]
    o = r["ood"]
    return [str(r["unknown"]).lower(), o["score"], repr(o["value"]), repr(o["threshold"])]


def ood_schema():
    import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

    return [
        ("unknown", pa.bool_()),
        ("ood_score", pa.string()),
        ("ood_value", pa.float64()),
        ("ood_threshold", pa.float64()),
    ]


def ood_columns(rows: list[dict]) -> dict:
    ood = [r.get("ood") or {} for r in rows]
    return {
        "unknown": [r.get("unknown") for r in rows],
        "ood_score": [o.get("score") for o in ood],
        "ood_value": [o.get("value") for o in ood],
        "ood_threshold": [o.get("threshold") for o in ood],
    }


@dataclass(frozen=True)
class Layout:
    """The columns of one model's rows: a single-label model's (the default: CSV_HEADER, parquet_schema), or a
    multi-label model's (`classes` given): path, labels, a score per label, error; either followed by OOD_HEADER's
    with `ood` (--reject ood)."""

    classes: tuple[str, ...] | None = None  # None: single-label
    ood: bool = False  # --reject ood: the unknown and ood_* columns

    @property
    def header(self) -> list:
        return self._header() + (OOD_HEADER if self.ood else [])

    def _header(self) -> list:
        if self.classes is None:
            return CSV_HEADER
        # the labels are the model's strings: escaped as every other cell a user's data fills
        return ["path", "labels", *(csv_cell(f"score_{c}") for c in self.classes), "error"]

    def csv_row(self, r: dict) -> list:
        return self._csv_row(r) + (ood_cells(r) if self.ood else [])

    def _csv_row(self, r: dict) -> list:
        if self.classes is None:
            return csv_row(r)
        if "error" in r:
            return [csv_cell(r["path"]), "", *([""] * len(self.classes)), csv_cell(r["error"])]
        return [csv_cell(r["path"]), csv_cell(join_labels(r["labels"])), *(repr(v) for v in r["scores"].values()), ""]

    def schema(self):
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

        if self.classes is None:
            fields = list(parquet_schema())
        else:
            scores = pa.struct([(c, pa.float32()) for c in self.classes])
            fields = [
                ("path", pa.string()),
                ("labels", pa.list_(pa.string())),
                ("scores", scores),
                ("error", pa.string()),
            ]
        return pa.schema(fields + (ood_schema() if self.ood else []))

    def table(self, rows: list[dict]):
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

        if self.classes is None:
            cols = parquet_columns(rows)
        else:
            ok = ["error" not in r for r in rows]
            cols = {
                "path": [r["path"] for r in rows],
                "labels": [r["labels"] if good else None for r, good in zip(rows, ok)],
                "scores": [r["scores"] if good else None for r, good in zip(rows, ok)],
                "error": [r.get("error") for r in rows],
            }
        if self.ood:
            cols.update(ood_columns(rows))
        return pa.table(cols, schema=self.schema())


SINGLE_LAYOUT = Layout()


def layout_for(task: str, classes, *, ood: bool = False) -> Layout:
    """The rows of a model of `task` with `classes` (core/multilabel.py's task names); `ood`: with --reject's."""
    return Layout(tuple(classes) if task == MULTILABEL else None, ood)


def csv_bytes(rows) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def json_bytes(rows) -> bytes:
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


EMBEDDING_KEY = b"imgclf"  # the Parquet schema's metadata key: what made the embeddings (infer/embed.py)


@dataclass(frozen=True)
class EmbeddingLayout:
    """The rows of `imgclf embed` (Parquet only): path, label and split (null where the input has none), the
    embedding (a list of `dim` float32, L2-normalised; null for an unreadable image) and error. `meta`:
    the JSON that the schema's metadata records under EMBEDDING_KEY (the model, its preprocessing, ...)."""

    dim: int
    meta: str

    @property
    def header(self) -> list:
        return ["path", "label", "split", "embedding", "error"]

    def schema(self):
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

        return pa.schema(
            [
                ("path", pa.string()),
                ("label", pa.string()),
                ("split", pa.string()),
                # a list, not a fixed-size list: pyarrow 25's Parquet reader refuses a null fixed-size entry (an
                # unreadable image's), "Expected all lists to be of size=D"; every non-null one has `dim` values
                ("embedding", pa.list_(pa.float32())),
                ("error", pa.string()),
            ],
            metadata={EMBEDDING_KEY: self.meta.encode("utf-8")},
        )

    def table(self, rows: list[dict]):
        import pyarrow as pa  # noqa: PLC0415 - optional package (Parquet output only)

        bad = np.array(["error" in r for r in rows], dtype=bool)
        flat = np.zeros((len(rows), self.dim), dtype=np.float32)
        for i, r in enumerate(rows):
            if not bad[i]:
                flat[i] = r["embedding"]
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * self.dim)
        vectors = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)), mask=pa.array(bad))
        cols = [
            pa.array([r["path"] for r in rows], pa.string()),
            pa.array([r.get("label") for r in rows], pa.string()),
            pa.array([r.get("split") for r in rows], pa.string()),
            vectors,
            pa.array([r.get("error") for r in rows], pa.string()),
        ]
        return pa.Table.from_arrays(cols, schema=self.schema())
