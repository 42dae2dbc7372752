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
import hashlib
import logging
import os
from dataclasses import astuple, dataclass, field

from imgclf.core.errors import UsageError, did_you_mean
from imgclf.core.escape import csv_cell, csv_value, one_line
from imgclf.core.fileio import atomic_open, open_text
from imgclf.core.multilabel import LABEL_SEPARATOR, MULTILABEL, split_labels
from imgclf.data.multilabel import multi_hot, strata

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------------------------ reading

FIX_HINT = "give the fixes.csv that `imgclf check DATA --deep --fixes F` writes (columns path,action[,to])"


@dataclass(frozen=True)
class Fixes:
    """A fixes file, read and checked: its rows (each with its line in the file) and the file's sha256."""

    file: str
    sha256: str
    rows: tuple[tuple[int, FixRow], ...]


def read_fixes(path: str, classes=None, *, what: str = "--apply-fixes") -> Fixes:
    """Read and check fixes.csv before any work: UTF-8, a header naming `path` and `action` (and `to` when a row
    relabels; other columns ignored), every row valid. `classes`: the data's classes (None: not known yet; a
    `to` is then checked when the data is). Each problem is one UsageError line naming the file and the line."""
    path = str(path)
    if not os.path.isfile(path):
        raise UsageError(f"{what} '{path}' not found: {FIX_HINT}")
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    rows: list[tuple[int, FixRow]] = []
    with open_text(path, f"{what} file", fix="save it as UTF-8 CSV", newline="") as f:
        reader = csv.DictReader(f)
        cols = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "action") if c not in cols]
        if missing:
            raise UsageError(
                f"{what} '{path}' has no column {' or '.join(missing)} in its header "
                f"(it has: {', '.join(c for c in cols if c) or 'no header'}): {FIX_HINT}"
            )
        reader.fieldnames = cols
        start = reader.line_num + 1  # the line a row starts on (a quoted cell may hold line breaks)
        for row in reader:
            rows.append((start, _row(row, path, start, cols, classes, what)))
            start = reader.line_num + 1
    fixes = Fixes(os.path.abspath(path), digest, tuple(rows))
    _check_agreement(fixes, what)
    return fixes


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    return csv_value((v if isinstance(v, str) else "").strip())


def _row(row: dict, path: str, line: int, cols: list[str], classes, what: str) -> FixRow:
    where = f"{what} '{path}' line {line}"
    p, action = _cell(row, "path"), _cell(row, "action").lower()
    if not p:
        raise UsageError(f"{where}: empty path; every row names the image it fixes")
    if action not in ACTIONS:
        raise UsageError(
            f"{where}: unknown action '{one_line(action)}' for {one_line(p)}; use {', '.join(ACTIONS)}{did_you_mean(action, ACTIONS)}"
        )
    to = _cell(row, "to")
    if action == "relabel":
        if "to" not in cols:
            raise UsageError(f"{where}: relabel needs a `to` column with the new label; add one, or use drop or keep")
        if not to:
            raise UsageError(
                f"{where}: relabel {one_line(p)} to what? Put the new label in its `to` cell, or use drop or keep"
            )
        check_label(to, classes, where)
    try:
        score = float(_cell(row, "score")) if _cell(row, "score") else None
    except ValueError:
        score = None  # informational: a reviewer's note in that cell changes nothing
    return FixRow(
        p, _cell(row, "kind"), action, _cell(row, "label"), to, score, _cell(row, "group"), _cell(row, "detail")
    )


def check_label(to: str, classes, where: str) -> None:
    """A relabel's `to` is one of the data's classes (a fix never makes a class); a multi-label image's new label
    set `a|b` is labels of the data, each of them (whether the data is multi-label is checked where it is
    applied: `relabelled_to`)."""
    if classes is None or to in classes:
        return
    for part in split_labels(to) if LABEL_SEPARATOR in to else [to]:
        if part not in classes:
            shown = ", ".join(list(classes)[:10]) + (" ..." if len(classes) > 10 else "")
            raise UsageError(
                f"{where}: '{one_line(part)}' is not a class of the data ({shown}){did_you_mean(part, classes)}"
            )


def relabelled_to(to: str, classes, *, multilabel: bool, where: str) -> list[str]:
    """The labels a relabel row gives its image: one class, or for a multi-label source the image's whole new
    label set (`a|b`, which replaces the set it had), in class order. A set for single-label data is refused."""
    labels = split_labels(to)
    if not multilabel and to not in classes and LABEL_SEPARATOR in to:
        raise UsageError(
            f"{where}: relabel to '{one_line(to)}' gives several labels, but the data has one class per image: "
            "give one class in `to`"
        )
    check_label(to, classes, where)
    return [c for c in classes if c in labels] if multilabel else [to]


def check_classes(fixes: Fixes, classes, what: str = "--apply-fixes") -> None:
    """Every relabel's `to` against the data's classes, once they are known."""
    for line, r in fixes.rows:
        if r.action == "relabel":
            check_label(r.to, classes, f"{what} '{fixes.file}' line {line}")


def check_relabels(fixes: Fixes, classes, *, multilabel: bool, what: str = "--apply-fixes") -> None:
    """Every relabel's `to` against the data's classes and task (`relabelled_to`), once they are known."""
    for line, r in fixes.rows:
        if r.action == "relabel":
            relabelled_to(r.to, classes, multilabel=multilabel, where=f"{what} '{fixes.file}' line {line}")


def _check_agreement(fixes: Fixes, what: str) -> None:
    """Two rows for one image that disagree (drop and relabel, or relabel to two labels) are refused; two relabels
    to one label set in another order (`a|b`, `b|a`) agree."""
    seen: dict[str, tuple[int, str, tuple]] = {}
    for line, r in fixes.rows:
        if r.action == "keep":
            continue  # reviewed, nothing to change: never in the way of another row's change
        does = "drop" if r.action == "drop" else f"relabel to '{r.to}'"
        key = ("drop",) if r.action == "drop" else ("relabel", *sorted(set(split_labels(r.to))))
        if r.path in seen and seen[r.path][2] != key:
            first, before, _ = seen[r.path]
            raise UsageError(
                f"{what} '{fixes.file}' line {line}: {one_line(r.path)}: {one_line(does)}, but line {first} says "
                f"{one_line(before)}: "
                "keep one of the two rows"
            )
        seen.setdefault(r.path, (line, does, key))


# ------------------------------------------------------------------------------------------------ applying


@dataclass
class Applied:
    """What `apply_fixes` did: the rows applied (their images are in the data; `keep` rows are not applied), the
    counts, the file's sha256, the rows that matched no image, and the train split's groups."""

    file: str
    sha256: str
    rows: list[FixRow] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # images left out, per split
    relabelled: dict[str, int] = field(default_factory=dict)  # images given another label, per split
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # {kind: {action: rows}}, the rows matched
    kept: int = 0  # `keep` rows matched: reviewed, nothing changed
    unmatched: int = 0
    # the train split's near-duplicate cluster per image (the `group` column), aligned with src.splits["train"];
    # an image no row groups is a group of its own (its path or id), so that carving can keep clusters together
    groups: list[str] = field(default_factory=list)
    # the same clusters with None where no row groups the image (for data/groups.merge_groups)
    clusters: list[str | None] = field(default_factory=list)
    grouped: bool = False  # whether any row matched gave a group
    warning: str | None = None  # the one line about rows that matched no image

    def record(self) -> dict:
        """results.json's and eval.json's `fixes` entry."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "rows_applied": len(self.rows),
            "dropped": sum(self.dropped.values()),
            "relabelled": sum(self.relabelled.values()),
            "dropped_per_split": self.dropped,
            "relabelled_per_split": self.relabelled,
            "kept": self.kept,
            "by_kind": self.by_kind,
            "unmatched": self.unmatched,
        }

    def summary(self) -> str:
        d, r = sum(self.dropped.values()), sum(self.relabelled.values())
        return f"fixes from {self.file}: {d} image{'s' * (d != 1)} dropped, {r} relabelled" + (
            f", {self.kept} kept as they are" if self.kept else ""
        )


def _base(src) -> str | None:
    """The folder a fixes file's relative paths start from: the data folder, or the CSV manifest's folder."""
    if src.kind == "csv":
        return os.path.dirname(os.path.abspath(src.location))
    if src.kind == "folder":
        return os.path.abspath(src.location)
    return None


def fix_key(path: str, base: str | None) -> str:
    """How an image is matched: an absolute, normalised path (a relative one from `base`), or an in-memory id as
    it is (`base` None: a source of arrays)."""
    if base is None:
        return path
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def locate(shown: str, data: str | None) -> str | None:
    """The file of an image as a finding or a fixes row shows it: an absolute path as it is, a relative one under
    the data folder (or the CSV manifest's folder); None for an in-memory id (`digits:17`) or unknown data."""
    if os.path.isabs(shown):
        return shown
    if not data or not os.path.exists(data):
        return None
    return os.path.join(data if os.path.isdir(data) else os.path.dirname(os.path.abspath(data)), shown)


def image_key(split, i: int) -> str:
    return os.path.normpath(os.path.abspath(split.paths[i])) if split.paths is not None else split.describe(i)


def plan_rows(fixes: Fixes, base: str | None) -> dict[str, list[FixRow]]:
    """{image key: its rows}, in the file's order."""
    by_key: dict[str, list[FixRow]] = {}
    for _, r in fixes.rows:
        by_key.setdefault(fix_key(r.path, base), []).append(r)
    return by_key


def apply_fixes(src, fixes: Fixes, *, warn: bool = True) -> Applied:
    """Drop and relabel images in every split of `src` (a DataSource; in place, its files untouched). Rows whose
    image is not in the data are counted and warned about in one line (`warn` False: the caller logs
    `Applied.warning` itself, after its last refusal); `keep` rows change nothing."""
    check_relabels(fixes, src.classes, multilabel=src.task == MULTILABEL)
    by_key = plan_rows(fixes, _base(src))
    index = {c: i for i, c in enumerate(src.classes)}
    if src.task == MULTILABEL:  # a relabelled image's stratum from the train split's label counts before any fix
        index = {"classes": src.classes, "train_counts": src.splits["train"].targets.sum(axis=0)}
    out = Applied(fixes.file, fixes.sha256)
    matched: set[str] = set()
    for name in list(src.splits):
        src.splits[name] = _apply_split(src.splits[name], name, by_key, index, out, matched)
    for key, rows in by_key.items():
        if key in matched:
            for r in rows:
                kinds = out.by_kind.setdefault(r.kind or "-", {})
                kinds[r.action] = kinds.get(r.action, 0) + 1
    out.unmatched = sum(len(rows) for k, rows in by_key.items() if k not in matched)
    if out.unmatched:
        first = next(rows[0].path for k, rows in by_key.items() if k not in matched)
        n = out.unmatched
        out.warning = (
            f"{fixes.file}: {n} row{'s' * (n != 1)} name{'s' * (n == 1)} images not in {src.location} (the first: "
            f"{first}): skipped; a fixes file of an earlier version of the data applies to the images still there"
        )
        if warn:
            log.warning("%s", out.warning)
    src.notes.append(out.summary())
    src.fixes = out.record()
    return out


def _apply_split(split, name: str, by_key, index, out: Applied, matched: set) -> object:
    """One split with the rows applied. `index`: class -> index, or for a multi-label split the classes and the
    train label counts: a relabel there replaces the image's multi-hot target (and its stratum)."""
    keep, labels, groups, clusters = [], list(split.labels), [], []
    targets = split.targets.copy() if split.targets is not None else None
    dropped = relabelled = 0
    for i in range(len(split)):
        key = image_key(split, i)
        rows = by_key.get(key)
        if not rows:
            keep.append(i)
            groups.append(split.describe(i))
            clusters.append(None)
            continue
        matched.add(key)
        group = next((r.group for r in rows if r.group), "")
        out.grouped |= bool(group)
        out.kept += sum(r.action == "keep" for r in rows)
        out.rows += [r for r in rows if r.action != "keep"]
        if any(r.action == "drop" for r in rows):
            dropped += 1
            continue
        to = next((r.to for r in rows if r.action == "relabel"), None)
        if to is not None and targets is not None:
            row = multi_hot([split_labels(to)], index["classes"])
            if not (row[0] == targets[i]).all():
                targets[i], labels[i] = row[0], strata(row, index["train_counts"])[0]
                relabelled += 1
        elif to is not None and index[to] != labels[i]:
            labels[i] = index[to]
            relabelled += 1
        keep.append(i)
        groups.append(group or split.describe(i))
        clusters.append(group or None)
    new = split.subset(keep, name)
    new.labels = [labels[i] for i in keep]
    if targets is not None:
        new.targets = targets[keep]
    out.dropped[name], out.relabelled[name] = dropped, relabelled
    if name == "train":
        out.groups, out.clusters = groups, clusters
    return new


def write_applied(applied: Applied, path: str) -> None:
    """fixes_applied.csv: exactly the rows applied, in fixes.csv's columns."""
    write_fixes(applied.rows, path)
