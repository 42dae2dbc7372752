"""Multi-label data: a CSV manifest whose images hold any number of labels, as class names and multi-hot targets.

Two forms of manifest (paths relative to the CSV, an optional `split` column, other columns kept for --group-by):
- a label cell holding several labels, `path,labels` (or `path,label`) with cells like `cat|dog`; an empty cell is
  an image with none of them. A `labels` column, a cell with a `|`, or `--task multilabel` makes the manifest
  multi-label; otherwise `label` holds one class per image, as it always has.
- one 0/1 column per label and no `label` column: `path,cat,dog` with rows like `a.jpg,1,0`. A column whose cells
  are all 0 or 1 is a label; a column with no 0/1 cell at all is kept as an ordinary column (said in a note); a
  column that mixes them (a 0/1 column holding a 2) is refused with its line.

A split's `targets` is N x C uint8 (1: the image holds the label); its `labels` are then each image's stratum,
the index of its rarest label (by training images), C for an image with none: what carving validation
stratifies by and `--balance` weighs.
"""

from __future__ import annotations

import numpy as np

from imgclf.core.errors import DataError
from imgclf.core.multilabel import MULTILABEL, SINGLE, split_labels

BINARY = ("0", "1")


def is_multilabel_header(label_col: str | None, cells: list[str], task: str | None) -> bool:
    """Whether a manifest with label column `label_col` (None: the 0/1 form) is multi-label: asked for, the 0/1
    form, a `labels` column, or a cell holding several labels."""
    if task == MULTILABEL or label_col is None or label_col == "labels":
        return True
    return task != SINGLE and any("|" in c for c in cells)


def label_columns(path, extra: list[str], cells: list[dict], lines: list[int]) -> tuple[list[str], list[str]]:
    """The 0/1 form's label columns and the columns kept as ordinary ones, checked cell by cell: a column with
    any 0/1 cell must hold only 0 or 1 (else one line naming the line, the column and the cell)."""
    labels, others = [], []
    for col in extra:
        values = [c[col] for c in cells]
        if not any(v in BINARY for v in values):
            others.append(col)
            continue
        for v, n in zip(values, lines):
            if v not in BINARY:
                shown = f"'{v}'" if v else "an empty cell"
                raise DataError(
                    f"CSV '{path}' line {n}: column '{col}' holds {shown}, but a label column holds 0 or 1 in every "
                    f"row: fix the cell (if '{col}' is not a label, write its values as words, e.g. g0, g1)"
                )
        labels.append(col)
    if not labels:
        raise DataError(
            f"CSV '{path}' has no label column: give path,label (one class or 'a|b' per image) or one 0/1 column "
            "per label"
        )
    return labels, others


def sets_from_cells(path, cells: list[str], lines: list[int], *, multilabel: bool) -> list[list[str]]:
    """Each row's labels from its label cell: one per row (single-label; an empty cell refused) or a set."""
    if multilabel:
        return [split_labels(c) for c in cells]
    for c, n in zip(cells, lines):
        if not c:
            raise DataError(
                f"CSV '{path}' line {n}: empty label; every row needs one (for images with several labels or none, "
                "write them as 'a|b' or leave the cell empty and pass --task multilabel)"
            )
    return [[c] for c in cells]


def sets_from_columns(label_cols: list[str], cells: list[dict]) -> list[list[str]]:
    """Each row's labels from the 0/1 columns (already checked)."""
    return [[c for c in label_cols if row[c] == "1"] for row in cells]


def multi_hot(sets: list[list[str]], classes: list[str]) -> np.ndarray:
    """N x C uint8: 1 where the image holds the class."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(sets), len(classes)), dtype=np.uint8)
    for i, s in enumerate(sets):
        out[i, [index[c] for c in s]] = 1
    return out


def strata(targets: np.ndarray, train_counts: np.ndarray) -> list[int]:
    """Each image's stratum: the index of its rarest label by `train_counts` (ties: the first), C for none."""
    n_cls = targets.shape[1]
    rank = np.where(targets > 0, train_counts[None, :], np.iinfo(np.int64).max)
    key = rank.argmin(axis=1)
    key[targets.sum(axis=1) == 0] = n_cls
    return [int(k) for k in key]


def check_trained(path, classes: list[str], train_targets: np.ndarray) -> None:
    """Every label needs training images: one the model never sees positive cannot be learnt."""
    counts = train_targets.sum(axis=0)
    missing = [c for c, n in zip(classes, counts) if n == 0]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        what = f"label {names} is" if len(missing) == 1 else f"labels {names} are"
        raise DataError(
            f"{what} on no training image in '{path}': add training images that hold them, or drop them from the "
            "manifest"
        )


def label_counts(targets: np.ndarray) -> np.ndarray:
    """Images per label."""
    return targets.sum(axis=0).astype(np.int64)


def co_occurrence(targets: np.ndarray) -> np.ndarray:
    """C x C: images that hold both labels (the diagonal: images per label)."""
    t = targets.astype(np.int64)
    return t.T @ t
