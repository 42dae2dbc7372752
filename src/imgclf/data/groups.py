"""Groups of images that must stay on one side of a split: frames of one video, photos of one patient, shots of
one object (`--group-by`).

`--group-by VALUE` names a group per image: when the data is a CSV manifest with a column VALUE, that column's
cell; otherwise VALUE is a regular expression searched in each image's path as the data names it (relative to the
data folder or the CSV's folder; an in-memory image's id, e.g. `digits:17`), whose match (its first capture group
if it has one) names the group. An image the pattern does not match (or whose cell is empty) is a group of its
own, and a note says how many there are.

Used by data/sources.py (the carved validation split keeps every group on one side: scikit-learn's
`StratifiedGroupKFold`), by `imgclf check --group-by` (a group on more than one split is a `group-leak`) and by
whoever merges groupings (`merge_groups`: user groups and near-duplicate clusters, by scipy's connected
components). Torch-free.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.core.errors import DataError, UsageError

EXAMPLES = 5  # groups named in a note or a warning


@dataclass(frozen=True)
class GroupBy:
    """What `--group-by VALUE` means for a given data source: a column, or a compiled pattern."""

    value: str
    column: str | None = None
    pattern: re.Pattern | None = None

    def describe(self) -> str:
        return f"column '{self.column}'" if self.column else f"pattern '{self.value}'"


@dataclass
class Groups:
    """The group of each image of one split."""

    keys: list[str]
    by: GroupBy
    own: int = 0  # images the pattern does not match (or with an empty cell): each a group of its own
    own_example: str | None = None

    def own_note(self, split: str) -> str:
        what = "have an empty cell in" if self.by.column else "do not match"
        return (
            f"--group-by: {self.own} of the {len(self.keys)} {split} images {what} {self.by.describe()} "
            f"(e.g. '{self.own_example}'): each is a group of its own"
        )


def parse_group_by(value: str, columns: Iterable[str] = (), *, where: str = "the data") -> GroupBy:
    """A column of the manifest when it has one of that name (headers are read lower-case), else a pattern;
    a pattern that does not compile is refused in one line."""
    value = str(value)
    if not value.strip():
        raise UsageError("--group-by is empty: name a CSV column, or give a pattern over the paths, e.g. '^(\\w+)_'")
    columns = sorted(columns)
    if value.strip().lower() in columns:
        return GroupBy(value, column=value.strip().lower())
    try:
        pattern = re.compile(value)
    except re.error as e:
        cols = f"the columns of {where} are {', '.join(columns)}" if columns else f"{where} has no extra columns"
        raise UsageError(
            f"--group-by '{value}' is not a column and not a regular expression ({e}; {cols}): "
            "name a column, or fix the pattern (e.g. '^(\\w+)_' names a group by the start of the file name)"
        ) from None
    return GroupBy(value, pattern=pattern)


def check_group_by(value: str, data: str | None) -> GroupBy:
    """`--group-by` checked before any work with what needs no listing: the manifest's header (when `data` is a
    CSV file) and the pattern's syntax. A pattern that matches no path is refused once the data is listed."""
    columns: list[str] = []
    if data and str(data).lower().endswith(".csv") and os.path.isfile(data):
        try:
            with open(data, newline="", encoding="utf-8-sig") as f:
                columns = [c.strip().lower() for c in next(csv.reader(f), [])]
        except (OSError, UnicodeDecodeError):
            pass  # opening the data says what is wrong with it, in its own words
    return parse_group_by(value, columns, where=str(data))


def columns_of(src) -> set[str]:
    """The extra columns of a DataSource's manifest (none for folders and named sets)."""
    return {c for s in src.splits.values() for c in (s.columns or {})}


def names_of(split, base: str | None) -> list[str]:
    """Each image of a Split as the data names it: its path relative to `base` (with /), else its id."""
    if split.paths is None:
        return [split.describe(i) for i in range(len(split))]
    out = []
    for p in split.paths:
        try:
            out.append(Path(p).relative_to(base).as_posix() if base else p)
        except ValueError:
            out.append(p)  # an absolute path in a manifest, outside its folder
    return out


def group_keys(names: Sequence[str], by: GroupBy, columns: dict[str, list[str]] | None = None) -> Groups:
    """The group of each image: its cell of `by.column` (`columns`, a cell per image), or the pattern's match in
    its name. An image without one is a group of its own, named by its name."""
    keys, own, example = [], 0, None
    cells = (columns or {}).get(by.column) if by.column else None
    for i, name in enumerate(names):
        key = None
        if by.column:
            key = (cells[i] if cells is not None else "") or None
        else:
            m = by.pattern.search(name)
            if m:
                key = m.group(1) if m.re.groups and m.group(1) is not None else m.group(0)
        if key is None:
            own, example = own + 1, example or name
            key = name
        keys.append(key)
    return Groups(keys, by, own, example)


def check_matched(by: GroupBy, keyed: dict[str, Groups], *, where: str) -> None:
    """Refuse, in one line, a pattern that matches no path and a column that is empty in every row: neither
    groups anything, and a user who asked for groups would get none."""
    n = sum(len(g.keys) for g in keyed.values())
    if n == 0 or any(g.own < len(g.keys) for g in keyed.values()):
        return
    example = next(g.own_example for g in keyed.values() if g.keys)
    if by.column:
        raise DataError(
            f"--group-by: column '{by.column}' of {where} is empty in all {n} rows: fill it in with each image's "
            "group, or group by a pattern over the paths"
        )
    raise DataError(
        f"--group-by: pattern '{by.value}' matches none of the {n} paths (e.g. '{example}', relative to the data "
        "folder): write one that matches part of each path; its first (...) group, or the whole match, names the group"
    )


def keyed_groups(src, group_by: str) -> dict[str, Groups]:
    """The groups of every split of a DataSource, refused in one line where `group_by` cannot name any."""
    by = parse_group_by(group_by, columns_of(src), where=src.location)
    keyed = {n: group_keys(names_of(s, src.base()), by, s.columns) for n, s in src.splits.items()}
    check_matched(by, keyed, where=src.location)
    return keyed


def leaked_groups(keyed: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """{group: the splits it is on} for every group on more than one split (splits in the order given)."""
    seen: dict[str, list[str]] = {}
    for split, keys in keyed.items():
        for k in dict.fromkeys(keys):
            seen.setdefault(k, []).append(split)
    return {k: v for k, v in seen.items() if len(v) > 1}


def grouping_summary(group_by: str, keyed: dict[str, Groups], *, carved: bool) -> dict:
    """What a run records of its groups (results.json's `groups`): how many on each side, how many on both."""
    leaks = leaked_groups({n: g.keys for n, g in keyed.items()})
    any_groups = next(iter(keyed.values()))
    return {
        "group_by": group_by,
        "by": any_groups.by.describe(),
        "groups": len({k for g in keyed.values() for k in g.keys}),
        "per_split": {n: len(set(g.keys)) for n, g in keyed.items()},
        "own_groups": sum(g.own for g in keyed.values()),
        "split": "carved by group" if carved else "the data's own",
        "on_several_splits": len(leaks),
        "examples": sorted(leaks)[:EXAMPLES],
    }


# ----------------------------------------------------------------------------------------------- carving


def grouped_split(
    labels: Sequence[int], keys: Sequence[str], classes: Sequence[str], *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, val indices, how it was made): every group wholly on one side, classes stratified as far as
    groups allow (scikit-learn's StratifiedGroupKFold, shuffled by `seed`, K = 1/fraction folds; the fold
    nearest the fraction that keeps every class on both sides). Refused in one line where no fold does."""
    from sklearn.model_selection import StratifiedGroupKFold  # noqa: PLC0415 - heavy: only to carve validation

    y = np.asarray(labels)
    names, codes = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    _refuse_ungroupable(y, codes, names, classes)
    k = int(min(len(names), max(2, round(1 / val_fraction))))
    target, best = val_fraction * len(y), None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, codes)
        for i, (tr, va) in enumerate(folds):
            both = len(np.unique(y[tr])) == len(classes) == len(np.unique(y[va]))
            if both and (best is None or abs(len(va) - target) < abs(len(best[2]) - target)):
                best = (i, tr, va)
    if best is None:
        raise DataError(
            f"no split of the {len(names)} groups into {k} folds (--val-fraction {val_fraction:g}) keeps every class "
            "on both sides: pass a larger --val-fraction, add images of more groups, or give a val/ folder "
            "(or a split column)"
        )
    i, tr, va = best
    how = (
        f"grouped: {len(names)} groups, each wholly on one side, stratified by class as far as groups allow; "
        f"StratifiedGroupKFold fold {i + 1} of {k}, the one nearest the fraction {val_fraction:g} "
        f"({len(va) / len(y):.3f}), seed {seed}"
    )
    return np.sort(tr), np.sort(va), how


def _refuse_ungroupable(y: np.ndarray, codes: np.ndarray, names: np.ndarray, classes: Sequence[str]) -> None:
    """A class whose images are all in one group cannot be on both sides: refused in one line."""
    if len(names) < 2:
        raise DataError(
            f"--group-by puts all {len(y)} training images in one group ('{names[0]}'): nothing can be held out "
            "without splitting it; group by a finer column or pattern, or give a val/ folder (or a split column)"
        )
    for c, name in enumerate(classes):
        held = np.unique(codes[y == c])
        if len(held) < 2:
            what = f"all its images in group '{names[held[0]]}'" if len(held) else "no images"
            raise DataError(
                f"class '{name}' has {what}: a split that keeps each group on one side cannot put it on both; "
                "add images of another group, or give a val/ folder (or a split column)"
            )


# ----------------------------------------------------------------------------------------------- merging


def merge_groups(a: Sequence[str | None], b: Sequence[str | None]) -> list[str]:
    """One grouping from two over the same images (e.g. `--group-by` groups and near-duplicate clusters): images
    that either puts together end up in one group (connected components of the graph image - group, scipy's).
    A merged group is named by its first image's key in `a` (else in `b`); an image with neither key stays alone,
    named '#i'."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415 - heavy: only to merge groupings
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415 - the same

    if len(a) != len(b):
        raise ValueError(f"two groupings of {len(a)} and {len(b)} images: they must cover the same images")
    n = len(a)
    nodes: dict[tuple[int, str], int] = {}
    rows, cols = [], []
    for side, keys in enumerate((a, b)):
        for i, key in enumerate(keys):
            if key is not None and key != "":
                rows.append(i)
                cols.append(nodes.setdefault((side, str(key)), n + len(nodes)))
    size = n + len(nodes)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, comp = connected_components(graph, directed=False)
    names: dict[int, str] = {}
    for keys in (a, b):
        for i, key in enumerate(keys):
            if key is not None and key != "":
                names.setdefault(int(comp[i]), str(key))
    return [names.get(int(comp[i]), f"#{i}") for i in range(n)]
