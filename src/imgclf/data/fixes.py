"""fixes.csv: what `imgclf check --deep --fixes F` found, one row per finding and image, for a person to review and
edit, and what `--apply-fixes F` (train, check, evaluate) does with it, without touching the user's files.

The columns, in order (`COLUMNS`):

- `path`: the image as the data names it: relative to the data folder (or to the CSV manifest's folder), or an
  in-memory image's id (`digits:train:17`, `cifar10:train:17`).
- `kind`: what was found (`KINDS`): `label` (the label looks wrong), `near-duplicate`, `outlier`, `group-leak`,
  `duplicate`, `leak-across-splits`, `duplicate-across-labels`.
- `action`: what to do (`ACTIONS`): `drop` (leave the image out), `relabel` (use the label in `to`), `keep`
  (reviewed: nothing to change).
- `label`: the label the data gives the image; `to`: the new label (for `relabel`; the suggestion otherwise).
- `score`: how sure the finding is (per kind; informational), `group`: the cluster that holds the image (rows
  with one group are kept on one side of imgclf's own train/val split), `detail`: one line for the reviewer.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass

from imgclf.core.escape import csv_cell
from imgclf.core.fileio import atomic_open

COLUMNS = ("path", "kind", "action", "label", "to", "score", "group", "detail")
KINDS = (
    "label",
    "near-duplicate",
    "outlier",
    "group-leak",
    "duplicate",
    "leak-across-splits",
    "duplicate-across-labels",
)
ACTIONS = ("drop", "relabel", "keep")


@dataclass(frozen=True)
class FixRow:
    path: str
    kind: str
    action: str
    label: str = ""
    to: str = ""
    score: float | None = None
    group: str = ""
    detail: str = ""


def write_fixes(rows: list[FixRow], path: str) -> None:
    """fixes.csv, whole or not at all; every cell safe to open in a spreadsheet (core/escape.csv_cell)."""
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            cells = astuple(r)
            w.writerow([("" if c is None else f"{c:.4g}") if i == 5 else csv_cell(str(c)) for i, c in enumerate(cells)])
