"""Data sources: what `--data` can name, turned into class names and labelled splits.

A source is one of
- a folder with split folders (`train/` plus `val/`, `valid/` or `validation/`, optionally `test/`), each
  holding one folder per class;
- a folder of class folders only (validation carved out by a stratified, seeded split);
- a CSV manifest with columns `path,label` and an optional `split` column (paths relative to the CSV), or a
  multi-label one (`a|b` label cells, or one 0/1 column per label: data/multilabel.py);
- `cifar10` / `cifar100` (torchvision's readers, in a data root) or `digits` (scikit-learn's bundled set).

Class indices follow sorted class names and are the same for every split.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core.errors import DataError, did_you_mean
from imgclf.core.escape import csv_cell, csv_value
from imgclf.core.fileio import atomic_open, open_text, user_cache_home
from imgclf.core.multilabel import MULTILABEL, SINGLE, join_labels
from imgclf.data.cifar import read_cifar
from imgclf.data.groups import grouped_split, grouping_summary, keyed_groups, merge_groups
from imgclf.data.multilabel import (
    check_trained,
    is_multilabel_header,
    label_columns,
    label_counts,
    multi_hot,
    sets_from_cells,
    sets_from_columns,
    strata,
)

# torchvision's list plus GIF: anything PIL reads that people keep photos in.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
BUILTIN = ("cifar10", "cifar100", "digits")
DEFAULT_VAL_FRACTION = 0.2


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Split:
    """One split: either files on disk (`paths`) or images already in memory (`arrays`, N x H x W x 3 uint8)."""

    name: str
    labels: list[int]
    paths: list[str] | None = None
    arrays: np.ndarray | None = None
    ids: list[str] | None = None  # names for in-memory images, e.g. "digits:17"
    columns: dict[str, list[str]] | None = None  # a CSV manifest's other columns, a cell per image (--group-by)
    # multi-label data: N x C uint8, 1 where the image holds the label; `labels` are then each image's stratum
    # (its rarest label, C for none: data/multilabel.py), what carving and --balance use, not a class
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        if self.paths is not None:
            return self.paths[i]
        return self.ids[i] if self.ids is not None else f"{self.name}[{i}]"

    def subset(self, indices, name: str | None = None) -> Split:
        idx = list(indices)
        return Split(
            name=name or self.name,
            labels=[self.labels[i] for i in idx],
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            arrays=self.arrays[idx] if self.arrays is not None else None,
            ids=[self.ids[i] for i in idx] if self.ids is not None else None,
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()} if self.columns is not None else None,
            targets=self.targets[idx] if self.targets is not None else None,
        )

    def target_array(self) -> np.ndarray:
        """What a model learns from: the class indices (N, int64), or the multi-hot targets (N x C, float32)."""
        if self.targets is not None:
            return self.targets.astype(np.float32)
        return np.asarray(self.labels, dtype=np.int64)

    def label_names(self, i: int, classes: list[str]) -> list[str]:
        """Image `i`'s labels by name: its class, or the set a multi-label image holds (perhaps none)."""
        if self.targets is not None:
            return [c for c, t in zip(classes, self.targets[i]) if t]
        return [classes[self.labels[i]]]


@dataclass
class DataSource:
    kind: str  # folder | csv | cifar10 | cifar100 | digits
    location: str  # what the user passed, resolved
    classes: list[str]
    splits: dict[str, Split]
    # How validation was obtained: "folder" (its own split), "carved" (from train by a seeded split).
    val_origin: str = "folder"
    notes: list[str] = field(default_factory=list)
    fixes: dict | None = None  # what --apply-fixes did to the splits (data/fixes.Applied.record())
    grouping: dict | None = None  # --group-by: how many groups, and how many the split puts on both sides
    task: str = SINGLE  # single | multilabel (core/multilabel.py): splits then have `targets`

    def base(self) -> str | None:
        """The folder that images' paths are shown relative to (the data folder, or the CSV's); None in memory."""
        return {"folder": self.location, "csv": os.path.dirname(self.location)}.get(self.kind)

    def held_out_split(self) -> str:
        """The split a trained model is measured on when the user names none: test where the data has one, else
        val (the split training validated on; digits and a folder without a test folder have no test)."""
        return "test" if "test" in self.splits else "val"

    def split(self, name: str) -> Split:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits))
            raise DataError(
                f"split '{name}' is not in {self.location} (it has: {have}){did_you_mean(name, self.splits)}"
            )
        return self.splits[name]

    def fingerprint(self) -> str:
        """A short hash of what the data is: file paths, sizes and modification times, or the arrays."""
        h = hashlib.sha1()
        h.update(self.kind.encode())
        h.update("\0".join(self.classes).encode())
        for name in sorted(self.splits):
            h.update(name.encode())
            hash_split(h, self.splits[name])
        return h.hexdigest()[:16]


def hash_split(h, s: Split) -> None:
    """Feed a split's identity into hash `h`: labels, and each file's path, size and modification time (or the
    in-memory pixels). Cheap: one stat per file, no reading."""
    h.update(np.asarray(s.labels, dtype=np.int64).tobytes())
    if s.targets is not None:
        h.update(np.ascontiguousarray(s.targets, dtype=np.uint8).data)
    if s.paths is not None:
        for p in s.paths:
            try:
                st = os.stat(p)
                h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
    else:
        h.update(str(s.arrays.shape).encode())
        h.update(np.ascontiguousarray(s.arrays).data)


def default_data_root() -> str:
    """Where cifar10/cifar100 live: --data-root, else $IMGCLF_DATA, else a user cache folder."""
    if os.environ.get("IMGCLF_DATA"):
        return os.environ["IMGCLF_DATA"]
    return os.path.join(user_cache_home(), "data")


def open_source(
    data: str,
    *,
    data_root: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    download: bool = True,
    carve: bool = True,
    group_by: str | None = None,
    task: str | None = None,
) -> DataSource:
    """Resolve `--data` into a DataSource with at least `train` and `val` splits. `group_by` (a CSV column or a
    pattern over the paths, data/groups.py): a carved validation split keeps each group on one side; an existing
    one is left as it is, and `grouping` says which groups it puts on both sides. `carve` False: the source is
    returned before any of that, for the caller to change (apply fixes) and then call `finish_split`. `task`
    (--task): None, the data's own (a multi-label manifest is multi-label); `single` or `multilabel` insists."""
    if data is None or str(data).strip() == "":
        raise DataError("no data given: pass --data with a folder, a CSV file, or one of " + ", ".join(BUILTIN))
    data = str(data)
    src = named_source(data, data_root=data_root, download=download)
    if src is None:
        path = Path(data).expanduser()
        if not path.exists():
            hint = did_you_mean(data, BUILTIN)
            raise DataError(
                f"data '{data}' not found: pass a folder of class folders, a CSV of path,label, "
                f"or one of {', '.join(BUILTIN)}{hint}"
            )
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise DataError(
                    f"data file '{data}' is not a CSV: pass a CSV with columns path,label[,split] or a folder"
                )
            src = csv_source(path, task)
        else:
            src = _folder_source(path)
    if task == MULTILABEL and src.task != MULTILABEL:
        raise single_label_data(data)
    if carve:
        finish_split(src, val_fraction=val_fraction, seed=seed, group_by=group_by)
    return src


def single_label_data(data: str) -> DataError:
    """The refusal of `--task multilabel` for data that holds one label per image (folders, named sets, a CSV)."""
    return DataError(
        f"--task multilabel needs a multi-label CSV manifest, and '{data}' holds one label per image: write a CSV "
        "with path,labels (cells like 'cat|dog') or one 0/1 column per label"
    )


def listed_task(data: str | None, want: str | None = None) -> str:
    """The task of `data` without decoding anything: a CSV manifest is listed for its own (`want`, --task single or
    multilabel, insists, and a manifest that cannot be it is refused); class folders and named sets are
    single-label."""
    path = Path(str(data or "")).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return csv_source(path, want).task
    return SINGLE


def finish_split(
    src: DataSource, *, val_fraction: float, seed: int, group_by: str | None = None, clusters=None
) -> None:
    """The validation split of an opened source: carved from train where the data has none, by `group_by`'s groups
    (data/groups.py) merged with `clusters` (a near-duplicate cluster per train image or None, from fixes.csv), so
    that images either one links stay on one side."""
    clusters = clusters if clusters and any(c is not None for c in clusters) else None
    if group_by is not None:
        apply_group_by(src, group_by, val_fraction=val_fraction, seed=seed, clusters=clusters)
    elif "val" not in src.splits:
        groups = merge_groups(clusters, clusters) if clusters else None
        carve_validation(src, val_fraction=val_fraction, seed=seed, groups=groups)


def apply_group_by(src: DataSource, group_by: str, *, val_fraction: float, seed: int, clusters=None) -> None:
    """--group-by: the groups of every split, checked before any work; validation carved by group where the data
    has none (each group joined with the near-duplicate `clusters` its images are in), or the groups that its own
    split puts on both sides counted (`src.grouping`, a note)."""
    keyed = keyed_groups(src, group_by)
    carved = "val" not in src.splits
    if carved:
        keys = keyed["train"].keys if clusters is None else merge_groups(keyed["train"].keys, clusters)
        carve_validation(src, val_fraction=val_fraction, seed=seed, groups=keys)
        keyed = keyed_groups(src, group_by)  # counted again on the sides as carved: the record checks the split
    src.grouping = grouping_summary(group_by, keyed, carved=carved)
    src.notes.extend(g.own_note(n) for n, g in keyed.items() if g.own)


def named_source(data: str, *, data_root: str | None = None, download: bool = True) -> DataSource | None:
    """The built-in data set `data` names (cifar10, cifar100, digits; an existing path of that name wins) with
    its own splits only, no validation carved; None when `data` names none."""
    key = str(data).lower().replace("-", "").replace("_", "")
    if key not in BUILTIN or os.path.exists(data):
        return None
    if key == "digits":
        return _digits_source()
    return _cifar_source(key, data_root or default_data_root(), download=download)


# ----------------------------------------------------------------------------------------------- folders


def find_split_dirs(root: Path) -> dict[str, Path]:
    """Map canonical split names to the sub-folders of `root` that hold them (empty: no split layout)."""
    found: dict[str, Path] = {}
    try:
        children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    except OSError as e:
        raise DataError(f"cannot read folder '{root}': {e.strerror}") from None
    for split, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            if a in children:
                found[split] = children[a]
                break
    return found


def list_class_folder(folder: Path) -> dict[str, list[str]]:
    """{class name: sorted image paths} for a folder of class folders (files with image extensions only)."""
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in filenames if is_image_name(f) and not f.startswith("."))
        out[d.name] = sorted(files)
    return out


def _folder_source(root: Path) -> DataSource:
    root = root.resolve()
    split_dirs = find_split_dirs(root)
    if split_dirs and "train" not in split_dirs:
        raise DataError(
            f"'{root}' has {', '.join(p.name for p in split_dirs.values())}/ but no train/ folder: "
            "add train/ (with one folder per class) or point --data at a folder of class folders"
        )
    per_split = (
        {s: list_class_folder(p) for s, p in split_dirs.items()} if split_dirs else {"train": list_class_folder(root)}
    )
    classes = sorted(set().union(*[set(v) for v in per_split.values()]))
    if not classes:
        raise DataError(
            f"'{root}' holds no class folders: put the images of each class in a folder of its own (e.g. {root}/cats/1.jpg)"
        )
    train_classes = per_split["train"]
    where = split_dirs.get("train", root)
    empty = [c for c in classes if not train_classes.get(c)]
    if empty:
        raise DataError(
            f"class '{empty[0]}' has no images in {where}"
            + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
            + f": add images to {where / empty[0]} or remove that folder"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for s, by_class in per_split.items():
        paths, labels = [], []
        for c, files in by_class.items():
            paths.extend(files)
            labels.extend([index[c]] * len(files))
        if not paths:
            raise DataError(
                f"split folder '{split_dirs[s]}' holds no images: add class folders with images or remove it"
            )
        splits[s] = Split(s, labels, paths=paths)
    return DataSource("folder", str(root), classes, splits)


# ----------------------------------------------------------------------------------------------- CSV


def csv_source(path: Path, task: str | None = None) -> DataSource:
    """The DataSource of a CSV manifest (path,label[,split]; paths relative to the CSV's folder); `imgclf check`
    lists a CSV by the same rules. A multi-label manifest (data/multilabel.py: `a|b` label cells, a `labels`
    column, or one 0/1 column per label) gives a multi-label source; `task` (--task) None infers it, `single` or
    `multilabel` insists."""
    path = path.resolve()
    cols, rows = _read_manifest(path)
    label_col = next((c for c in ("labels", "label") if c in cols), None)
    extra = [c for c in cols if c and c not in ("path", "label", "labels", "split")]
    lines, cells = [r[0] for r in rows], [r[3] for r in rows]
    notes = []
    if label_col is None:
        label_cols, extra = label_columns(path, extra, cells, lines)
        sets, multi = sets_from_columns(label_cols, cells), True
        notes += [f"column '{c}' holds no 0/1 value: kept as a column (for --group-by), not a label" for c in extra]
    else:
        label_cells = [c[label_col] for c in cells]
        multi = is_multilabel_header(label_col, label_cells, task)
        sets = sets_from_cells(path, label_cells, lines, multilabel=multi)
    if multi and task == SINGLE:
        raise DataError(
            f"CSV '{path}' holds several labels per image (a 'labels' column, 'a|b' cells or 0/1 columns) but "
            "--task single was given: drop --task single to train a multi-label model"
        )
    by_split: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_split.setdefault(r[2], []).append(i)
    if "train" not in by_split:
        raise DataError(f"CSV '{path}' has no training rows: give rows with split 'train' (or no split column)")
    make = _multilabel_splits if multi else _single_label_splits
    classes, splits = make(path, rows, sets, by_split, label_cols if label_col is None else None)
    for s, split in splits.items():
        split.columns = {c: [cells[i][c] for i in by_split[s]] for c in extra} if extra else None
    src = DataSource("csv", str(path), classes, splits, task=MULTILABEL if multi else SINGLE, notes=notes)
    if multi and task != MULTILABEL:
        how = "its 0/1 label columns" if label_col is None else f"its '{label_col}' column"
        src.notes.append(f"task: multilabel ({len(classes)} labels, inferred from {how})")
    return src


def _read_manifest(path: Path) -> tuple[list[str], list[tuple[int, str, str, dict]]]:
    """The manifest's header (lower case) and rows: (line, full path, canonical split, every other cell)."""
    base = path.parent
    rows = []
    with open_text(str(path), "CSV", fix="save it as UTF-8 (path,label[,split])", newline="", error=DataError) as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in cols:
            raise DataError(
                f"CSV '{path}' needs a header with columns path,label (and optionally split), or path and one 0/1 "
                f"column per label; it has: {', '.join(cols) or 'no header'}"
            )
        reader.fieldnames = cols
        others = [c for c in cols if c and c not in ("path", "split")]
        for n, row in enumerate(reader, start=2):
            p = csv_value((row.get("path") or "").strip())
            if not p:
                raise DataError(f"CSV '{path}' line {n}: empty path; every row needs one")
            split = (row.get("split") or "train").strip().lower() or "train"
            canon = next((k for k, al in SPLIT_ALIASES.items() if split in al), None)
            if canon is None:
                raise DataError(
                    f"CSV '{path}' line {n}: unknown split '{split}'; use train, val or test{did_you_mean(split, SPLIT_ALIASES)}"
                )
            full = p if os.path.isabs(p) else str(base / p)
            rows.append((n, full, canon, {c: csv_value((row.get(c) or "").strip()) for c in others}))
    return cols, rows


def _single_label_splits(path, rows, sets, by_split, _label_cols):
    classes = sorted({s[0] for s in sets})
    index = {c: i for i, c in enumerate(classes)}
    train_labels = {sets[i][0] for i in by_split["train"]}
    missing = [c for c in classes if c not in train_labels]
    if missing:
        raise DataError(f"class '{missing[0]}' has no training rows in '{path}': add some or drop its rows")
    splits = {
        s: Split(s, [index[sets[i][0]] for i in idx], paths=[rows[i][1] for i in idx]) for s, idx in by_split.items()
    }
    return classes, splits


def _multilabel_splits(path, rows, sets, by_split, label_cols):
    classes = sorted(label_cols) if label_cols is not None else sorted({c for s in sets for c in s})
    if not classes:
        raise DataError(f"CSV '{path}' names no label on any image: give each image its labels ('a|b')")
    targets = multi_hot(sets, classes)
    train = targets[by_split["train"]]
    check_trained(path, classes, train)
    counts = label_counts(train)
    splits = {}
    for s, idx in by_split.items():
        t = targets[idx]
        splits[s] = Split(s, strata(t, counts), paths=[rows[i][1] for i in idx], targets=t)
    return classes, splits


# ----------------------------------------------------------------------------------------------- built-ins


def _digits_source() -> DataSource:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy: only for the digits set

    d = load_digits()
    # 8x8 grey levels 0..16 -> 0..255 RGB, so that every source hands the pipeline the same kind of image.
    grey = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    classes = [str(c) for c in d.target_names]
    split = Split("train", [int(t) for t in d.target], arrays=rgb, ids=[f"digits:{i}" for i in range(len(rgb))])
    return DataSource("digits", "digits", classes, {"train": split})


def _cifar_source(name: str, root: str, *, download: bool) -> DataSource:
    folder, classes, arrays = read_cifar(name, root, download=download)
    splits = {
        s: Split(s, labels, arrays=a, ids=[f"{name}:{s}:{i}" for i in range(len(labels))])
        for s, (labels, a) in arrays.items()
    }
    return DataSource(name, folder, classes, splits)


# ----------------------------------------------------------------------------------------------- splitting


def carve_validation(src: DataSource, *, val_fraction: float, seed: int, groups=None) -> None:
    """Stratified, seeded split of `train` into `train` + `val` (in place). Same inputs, same split. `groups` (a
    key per training image, data/groups.py): every group wholly on one side, stratified as far as groups allow."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(
            f"--val-fraction must be between 0 and 1 (got {val_fraction}); e.g. 0.2 keeps 20% for validation"
        )
    if groups is not None:
        train = src.splits["train"]
        labels, names = train.labels, src.classes
        if src.task == MULTILABEL:  # the strata present, as compact codes named by their rarest label
            present, codes = np.unique(rare_strata_merged(np.asarray(labels)), return_inverse=True)
            labels, names = codes.tolist(), [([*src.classes, "(no label)"])[k] for k in present]
        tr, va, how = grouped_split(labels, groups, names, val_fraction=val_fraction, seed=seed)
        src.splits["train"], src.splits["val"] = train.subset(tr, "train"), train.subset(va, "val")
        src.val_origin = "carved"
        src.notes.append(f"validation: {len(va)} images carved from train ({how})")
        return
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - heavy: only to carve validation

    train = src.splits["train"]
    labels = np.asarray(train.labels)
    if src.task == MULTILABEL:
        labels = rare_strata_merged(labels)
    counts = np.bincount(labels, minlength=len(src.classes))
    few = [src.classes[i] for i in np.flatnonzero(counts < 2)] if src.task == SINGLE else []
    if few:
        raise DataError(
            f"class '{few[0]}' has fewer than 2 images, too few to hold one out for validation: "
            "add images, or give a val/ folder (or a split column)"
        )
    check_carvable(len(labels), len(np.unique(labels)), val_fraction)
    idx = np.arange(len(labels))
    try:
        tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as e:
        raise DataError(
            f"cannot split {len(labels)} images into train/val with --val-fraction {val_fraction}: {e}"
        ) from None
    tr, va = np.sort(tr), np.sort(va)
    src.splits["train"] = train.subset(tr, "train")
    src.splits["val"] = train.subset(va, "val")
    src.val_origin = "carved"
    by = "by each image's rarest label" if src.task == MULTILABEL else "stratified"
    src.notes.append(f"validation: {len(va)} images carved from train ({by}, fraction {val_fraction}, seed {seed})")
    if src.task == MULTILABEL:
        _check_val_labels(src)


def rare_strata_merged(keys: np.ndarray) -> np.ndarray:
    """Multi-label strata with fewer than 2 images (too few to stratify) joined with the most common stratum."""
    counts = np.bincount(keys)
    if not (few := (counts > 0) & (counts < 2)).any():
        return keys
    return np.where(few[keys], counts.argmax(), keys)


def _check_val_labels(src: DataSource) -> None:
    """A carved multi-label validation split without some label cannot fit that label's threshold: said."""
    absent = [c for c, n in zip(src.classes, label_counts(src.splits["val"].targets)) if n == 0]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        src.notes.append(
            f"validation holds no image of label '{absent[0]}'{more}: its threshold stays at 0.5 (add images that "
            "hold it, or a larger --val-fraction)"
        )


def check_carvable(n: int, n_classes: int, val_fraction: float) -> None:
    """A stratified split of `n` images keeps ceil(fraction x n) for validation (scikit-learn's rounding) and
    needs at least one image of each class on both sides; refused in one line that says what would work."""
    n_val = math.ceil(val_fraction * n)
    if n_classes <= n_val <= n - n_classes:
        return
    fix = "add images, or give a val/ folder (or a split column)"
    lo, hi = math.ceil(100 * n_classes / n) / 100, math.floor(100 * (n - n_classes) / n) / 100
    if lo <= hi:
        fix = (
            f"pass --val-fraction {lo:g}, " + fix
            if lo == hi
            else f"pass a --val-fraction from {lo:g} to {hi:g}, " + fix
        )
    raise DataError(
        f"--val-fraction {val_fraction:g} of {n} images keeps {n_val} for validation, but a split that keeps every "
        f"one of the {n_classes} classes on both sides needs at least {n_classes} there and {n_classes} left to "
        f"train on: {fix}"
    )


def write_split_manifest(src: DataSource, path: str) -> None:
    """The split as a CSV (path or index, label, split), so a run's split can be read back exactly."""
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for name, s in src.splits.items():
            for i in range(len(s)):
                w.writerow([csv_cell(s.describe(i)), csv_cell(join_labels(s.label_names(i, src.classes))), name])
