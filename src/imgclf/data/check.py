"""`imgclf check DATA`: find what would break or quietly spoil training before a run is spent on it.

Every image is fully decoded (a JPEG cut in half opens fine and only fails on decode) and hashed by its
decoded pixels, so byte copies and re-encoded copies with other metadata both count as the same image.
Paths in findings are relative to the data folder (or to the CSV's folder); an in-memory image of a named data
set (digits, cifar10, cifar100) is shown by its id (`cifar10:train:17`) and hashed by its pixels the same way.

`inspect_data` is the listing and the one decode pass (with each image's perceptual hash when asked, for the
deep checks' near-duplicates); `check_data` is the report built from it (`report_of`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from imgclf.core.errors import DataError
from imgclf.core.multilabel import MULTILABEL, join_labels
from imgclf.data.balance import SAMPLER_FROM, imbalance_ratio
from imgclf.data.check_multilabel import count_labels, multilabel_lines, multilabel_summary
from imgclf.data.decode_pass import ImageInfo, decode_all, inspect_array, size_summary
from imgclf.data.fixes import check_relabels, plan_rows, read_fixes, relabelled_to
from imgclf.data.groups import check_matched, group_keys, grouping_summary, leaked_groups, parse_group_by
from imgclf.data.sources import DataSource, csv_source, find_split_dirs, is_image_name, named_source

log = logging.getLogger(__name__)

_ALWAYS = ("kind", "paths", "detail")

IMBALANCE_WARN_RATIO = SAMPLER_FROM  # where check warns is where `--balance auto` turns to the sampler
TINY_PIXELS = 8
# The text report stays readable on a folder with thousands of stray files or classes; --json has everything.
TEXT_LIMIT_PER_KIND = 20
TEXT_LIMIT_CLASSES = 40

# PIL's format names for each extension. MPO is what cameras write: a JPEG with extra frames.
_FORMATS_BY_EXT = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".gif": {"GIF"},
    ".bmp": {"BMP", "DIB"},
    ".ppm": {"PPM"},
    ".pgm": {"PPM"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
    ".webp": {"WEBP"},
}


@dataclass
class Finding:
    """One thing found. The deep checks (`check --deep`) also fill the review fields: `label` (given), `suggested`
    (the model's), `score` (how sure; per kind), `group` (a cluster or group naming the images together) and
    `wrong` (a label suspect's estimated probability of being wrong)."""

    kind: str
    paths: list[str]
    detail: str
    label: str | None = None
    suggested: str | None = None
    score: float | None = None
    group: str | None = None
    wrong: float | None = None

    def to_dict(self) -> dict:
        """The finding as JSON: the review fields only where they are set."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS}


@dataclass
class CheckReport:
    data: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "ok": self.ok,
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "summary": self.summary,
        }

    def format_text(self) -> str:
        s = self.summary
        per_split: dict[str, dict[str, int]] = s.get("classes_per_split", {})
        classes = s.get("classes", [])
        lines = [
            f"imgclf check {self.data} ({s.get('layout')} layout, {', '.join(per_split) or 'no splits'}; "
            f"{len(classes)} classes, {s.get('images', 0)} images)"
        ]
        for label, findings in (("ERROR", self.errors), ("WARN ", self.warnings)):
            shown: Counter = Counter()
            for f in findings:
                shown[f.kind] += 1
                if shown[f.kind] <= TEXT_LIMIT_PER_KIND:
                    lines.append(f"{label}  {f.kind}  " + (", ".join(f.paths) + ": " if f.paths else "") + f.detail)
            lines.extend(
                f"{label}  {k}  ... and {n - TEXT_LIMIT_PER_KIND} more (see --json)"
                for k, n in shown.items()
                if n > TEXT_LIMIT_PER_KIND
            )
        if per_split:
            lines += _class_table(s, per_split, classes)
        ratio = s.get("imbalance_ratio")
        if s.get("multilabel"):  # data/check_multilabel.py
            lines += multilabel_lines(s["multilabel"])
        else:
            lines.append(
                "class imbalance (largest/smallest in train): " + (f"{ratio:.2f}" if ratio is not None else "n/a")
            )
        size = s.get("image_size")
        if size:
            w, h = size["width"], size["height"]
            lines.append(
                f"image size (min/median/max): width {w['min']}/{w['median']}/{w['max']}, "
                f"height {h['min']}/{h['median']}/{h['max']}; {size['distinct']} distinct size{'s' * (size['distinct'] != 1)}"
            )
        if s.get("modes"):
            lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()))
        if s.get("groups"):
            g = s["groups"]
            lines.append(
                f"groups ({g['by']}): {g['groups']}; "
                + ", ".join(f"{k} {n}" for k, n in g["per_split"].items())
                + f"; on more than one split: {g['on_several_splits']}"
            )
            lines.extend(g.get("own_notes", []))
        if s.get("hidden_files"):
            lines.append(f"hidden files skipped: {s['hidden_files']}")
        if s.get("fixes"):
            fx = s["fixes"]
            lines.append(
                f"fixes applied from {fx['file']}: {fx['dropped']} dropped, {fx['relabelled']} relabelled, "
                f"{fx['unmatched']} rows not in the data"
            )
        ne, nw = len(self.errors), len(self.warnings)
        lines.append(f"{ne} error{'s' * (ne != 1)}, {nw} warning{'s' * (nw != 1)} in {s.get('files', 0)} files")
        return "\n".join(lines)


def _class_table(s: dict, per_split: dict[str, dict[str, int]], classes: list[str]) -> list[str]:
    """check's text table: images per class (a multi-label manifest's: per label) and split, then the total."""
    first = ["class", "images"] if s.get("multilabel") else ["class"]
    width = max(len(c) for c in [*first, *classes[:TEXT_LIMIT_CLASSES]])
    row = lambda name, cells: "  " + "  ".join([f"{name:<{width}}", *(f"{x:>8}" for x in cells)])  # noqa: E731
    lines = ["", row("class", per_split)]
    lines += [row(c, [per_split[n][c] for n in per_split]) for c in classes[:TEXT_LIMIT_CLASSES]]
    if len(classes) > TEXT_LIMIT_CLASSES:
        lines.append(f"  ... and {len(classes) - TEXT_LIMIT_CLASSES} more classes (see --json)")
    if s.get("multilabel"):  # an image counts once per label: the images themselves
        lines.append(row("images", [v["images"] for v in s["multilabel"]["labels_per_image"].values()]))
    else:
        lines.append(row("total", [sum(v.values()) for v in per_split.values()]))
    return lines


@dataclass
class Item:
    """One image of the listing."""

    split: str
    label: str
    path: str  # absolute, for decoding (an in-memory image: its id)
    shown: str  # relative, for findings (an in-memory image: its id)
    array: np.ndarray | None = field(default=None, repr=False)  # an in-memory image's pixels, H x W x 3 uint8


@dataclass
class _Listing:
    layout: str  # splits | classes | csv
    base: Path  # findings show paths relative to this
    split_dirs: dict[str, Path] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    files: int = 0
    hidden: int = 0
    columns: dict[str, list[str]] = field(default_factory=dict)  # a manifest's other columns, a cell per item
    multilabel: bool = False  # a multi-label manifest: each item's label is its label set's cell (`a|b`, "" none)

    def place(self, split: str, cls: str) -> str:
        """Where a class of a split is, as findings show it: its folder, or split:class in a CSV."""
        return _shown(self.split_dirs[split] / cls, self.base) if split in self.split_dirs else f"{split}:{cls}"


@dataclass
class Inspected:
    """The listing and the one decode pass over it: what `check` reports from, and what the deep checks take
    (the items, which are readable, each one's pixel digest and perceptual hash) without decoding again."""

    data: str  # as the report names it: the resolved folder or CSV, or the data set's name
    listing: _Listing
    results: list[tuple[str, object]]  # per item: ("ok", ImageInfo) or (error kind, reason)
    started: float = 0.0  # perf_counter at the start, for the report's seconds
    fixes: dict | None = None  # what --apply-fixes did to the listing, for the summary
    grouping: dict | None = None  # --group-by's summary

    @property
    def items(self) -> list[Item]:
        return self.listing.items

    @property
    def readable(self) -> list[bool]:
        return [status == "ok" for status, _ in self.results]

    @property
    def infos(self) -> list[ImageInfo | None]:
        return [info if status == "ok" else None for status, info in self.results]

    @property
    def hashes(self) -> list[int | None]:
        """Each item's perceptual hash (None: unreadable, or not asked for)."""
        return [i.phash if i is not None else None for i in self.infos]

    @property
    def digests(self) -> list[bytes | None]:
        """Each item's pixel digest (None: unreadable): equal digests are the exact duplicates check reports."""
        return [i.digest if i is not None else None for i in self.infos]


def inspect_data(
    data: str,
    *,
    workers: int | None = None,
    progress: bool = False,
    phash: bool = False,
    fixes: str | None = None,
    group_by: str | None = None,
    data_root: str | None = None,
) -> Inspected:
    """List `data` (a folder, a CSV manifest, or digits/cifar10/cifar100 by name) and decode every image once;
    `phash`: also each image's perceptual hash. `fixes` and `group_by`: as `check_data` takes them."""
    start = time.perf_counter()
    src = named_source(str(data), data_root=data_root)
    if src is not None:
        lst, shown_as = _list_named(src), src.kind
    else:
        path = Path(str(data)).expanduser()
        lst, shown_as = _list_data(path, data), str(path.resolve())
    applied = _apply_fixes(lst, fixes) if fixes else None
    grouping = _group_leaks(lst, group_by) if group_by is not None else None  # refused before any decoding
    if src is not None:
        results = [inspect_array(it.array, phash) for it in lst.items]
    else:
        results = decode_all([it.path for it in lst.items], workers=workers, progress=progress, phash=phash)
    return Inspected(shown_as, lst, results, start, applied, grouping)


def check_data(
    data: str,
    *,
    workers: int | None = None,
    progress: bool = False,
    fixes: str | None = None,
    group_by: str | None = None,
    phash: bool = False,
    data_root: str | None = None,
) -> CheckReport:
    """Decode every image under `data`; errors are what would break or falsify training, warnings what may spoil it.
    `fixes`: a fixes.csv; the data is checked as it would be with it (dropped images skipped, relabelled ones
    under their new label), the files untouched. `group_by` (data/groups.py): a group on more than one split is a
    `group-leak` error. `data` may also be digits, cifar10 or cifar100 (`data_root`: where cifar lives)."""
    ins = inspect_data(
        data, workers=workers, progress=progress, phash=phash, fixes=fixes, group_by=group_by, data_root=data_root
    )
    return report_of(ins)


def report_of(ins: Inspected) -> CheckReport:
    """The check's report of an inspection (the listing's own findings are copied, not changed)."""
    lst = replace(ins.listing, errors=list(ins.listing.errors), warnings=list(ins.listing.warnings))
    readable, failed = _per_image(lst, ins.results)
    _same_pixels(readable, lst.errors, lst.warnings)

    classes = sorted(lst.classes)
    splits = sorted({it.split for it in lst.items} | set(lst.split_dirs), key=_split_order)
    per_split = {s: {c: 0 for c in classes} for s in splits}
    count_labels(per_split, [(it.split, it.label) for it, _ in readable], multilabel=lst.multilabel)
    _empty_classes(lst, per_split, failed)
    multi = _multilabel(lst, readable, per_split) if lst.multilabel else None
    ratio = None if lst.multilabel else _imbalance(lst, readable, per_split)

    infos = [info for _, info in readable]
    summary = {
        "layout": lst.layout,
        "files": lst.files,
        "hidden_files": lst.hidden,
        "images": len(lst.items),
        "readable": len(readable),
        "classes": classes,
        "classes_per_split": per_split,
        "imbalance_ratio": ratio,
        "image_size": size_summary(infos),
        "modes": dict(Counter(i[1] for i in infos).most_common()),
        "formats": dict(Counter(i[0] for i in infos).most_common()),
        "seconds": round(time.perf_counter() - ins.started, 2),
    } | ({"groups": ins.grouping} if ins.grouping else {})
    if multi is not None:  # the class table counts images per label; data/check_multilabel.py
        summary.update(task=MULTILABEL, multilabel=multi)
    if ins.fixes is not None:
        summary["fixes"] = ins.fixes
    order = {k: i for i, k in enumerate(_KIND_ORDER)}
    key = lambda f: (order.get(f.kind, len(order)), f.paths)  # noqa: E731
    return CheckReport(ins.data, sorted(lst.errors, key=key), sorted(lst.warnings, key=key), summary)


def _list_data(path: Path, data: str) -> _Listing:
    """What `check` reads: a folder (of class folders, or of split folders) or a CSV manifest."""
    if not path.exists():
        raise DataError(f"data '{data}' not found: pass a folder of class folders, or a folder holding train/ and val/")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(
                f"data '{data}' is a file, not a folder: pass a folder of class folders (or a CSV of path,label[,split])"
            )
        return _list_csv(path.resolve())
    return _list_folder(path.resolve())


def _apply_fixes(lst: _Listing, path: str) -> dict:
    """The listing as `fixes` leaves it: dropped images out, relabelled ones under their new label (checked before
    anything is decoded); what it did, for the summary."""
    fixes = read_fixes(path, sorted(lst.classes))
    check_relabels(fixes, sorted(lst.classes), multilabel=lst.multilabel)
    by_key = plan_rows(fixes, str(lst.base))
    items, matched = [], set()
    dropped = relabelled = 0
    for it in lst.items:
        key = os.path.normpath(os.path.abspath(it.path))
        rows = by_key.get(key, [])
        matched.update([key] if rows else [])
        if any(r.action == "drop" for r in rows):
            dropped += 1
            continue
        new = [relabelled_to(r.to, sorted(lst.classes), multilabel=lst.multilabel, where="") for r in rows]
        to = next((join_labels(n) for r, n in zip(rows, new) if r.action == "relabel"), it.label)
        relabelled += to != it.label
        items.append(Item(it.split, to, it.path, it.shown, it.array))
    lst.items = items
    unmatched = sum(len(rows) for k, rows in by_key.items() if k not in matched)
    if unmatched:
        log.warning("%s: %d row(s) name images not in %s: skipped", fixes.file, unmatched, lst.base)
    return {
        "file": fixes.file,
        "sha256": fixes.sha256,
        "dropped": dropped,
        "relabelled": relabelled,
        "unmatched": unmatched,
    }


def _per_image(lst: _Listing, results: list[tuple[str, object]]) -> tuple[list[tuple[Item, tuple]], Counter]:
    """(readable items with what decoding found, failures by (split, class)); each file's faults to the listing."""
    readable: list[tuple[Item, tuple]] = []
    failed: Counter = Counter()
    for it, (status, info) in zip(lst.items, results):
        if status != "ok":
            lst.errors.append(Finding(status, [it.shown], info))
            failed[(it.split, it.label)] += 1
            continue
        readable.append((it, info))
        fmt, w, h = info.format, info.width, info.height
        ext = os.path.splitext(it.path)[1].lower()
        if ext in _FORMATS_BY_EXT and fmt not in _FORMATS_BY_EXT[ext]:
            lst.warnings.append(Finding("extension-mismatch", [it.shown], f"named {ext} but the file is {fmt}"))
        if w < TINY_PIXELS or h < TINY_PIXELS:
            lst.warnings.append(Finding("tiny-image", [it.shown], f"{w}x{h} pixels"))
    return readable, failed


def _empty_classes(lst: _Listing, per_split: dict[str, dict[str, int]], failed: Counter) -> None:
    """A class without readable images: an error in train, a warning in the other splits."""
    for s, counts in per_split.items():
        for c, n_readable in counts.items():
            if n_readable:
                continue
            n = failed[(s, c)]
            why = f"no readable images ({n} file{'s' * (n != 1)} failed)" if n else "no images"
            if s == "train":
                lst.errors.append(
                    Finding("empty-class", [lst.place(s, c)], f"{why} in train: add images or remove the class")
                )
            else:
                lst.warnings.append(
                    Finding("empty-class", [lst.place(s, c)], f"{why} in {s}: {s} scores will not cover this class")
                )


def _multilabel(lst: _Listing, readable: list[tuple[Item, tuple]], per_split: dict) -> dict:
    """A multi-label manifest's summary entry; its warnings into the listing's (data/check_multilabel.py)."""
    items = [(it.split, it.label, it.shown) for it, _ in readable]
    summary, found = multilabel_summary(items, sorted(lst.classes), per_split, IMBALANCE_WARN_RATIO)
    lst.warnings += [Finding(kind, paths, detail) for kind, paths, detail in found]
    return summary


def _imbalance(lst: _Listing, readable: list[tuple[Item, tuple]], per_split: dict) -> float | None:
    """The train split's imbalance ratio (largest class / smallest); a warning from IMBALANCE_WARN_RATIO."""
    train = {c: n for c, n in per_split.get("train", {}).items() if n}
    ratio = imbalance_ratio(it.label for it, _ in readable if it.split == "train")
    if ratio is not None and ratio > IMBALANCE_WARN_RATIO:
        big, small = max(train, key=train.get), min(train, key=train.get)
        lst.warnings.append(
            Finding(
                "class-imbalance",
                [lst.place("train", big), lst.place("train", small)],
                f"largest/smallest train class is {ratio} ({train[big]} vs {train[small]} images)",
            )
        )
    return ratio


_KIND_ORDER = (
    "zero-byte",
    "truncated",
    "not-an-image",
    "bad-shape",
    "unreadable",
    "empty-class",
    "duplicate-across-labels",
    "leak-across-splits",
    "group-leak",
    "extension-mismatch",
    "duplicate",
    "class-imbalance",
    "label-imbalance",
    "label-on-every-image",
    "no-label",
    "tiny-image",
    "non-image-file",
    "stray-file",
    "stray-folder",
)


def _split_order(name: str) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(name, 3), name)


def _shown(p: Path | str, base: Path) -> str:
    try:
        return Path(p).relative_to(base).as_posix()
    except ValueError:
        return str(p)


def _list_folder(root: Path) -> _Listing:
    """Walk the folder as sources.list_class_folder does, and note everything that walk would skip."""
    split_dirs = find_split_dirs(root)
    if split_dirs and "train" not in split_dirs:
        raise DataError(
            f"'{root}' has {', '.join(p.name for p in split_dirs.values())}/ but no train/ folder: "
            "add train/ (with one folder per class) or pass a folder of class folders"
        )
    lst = _Listing("splits" if split_dirs else "classes", root, dict(split_dirs) or {"train": root})
    if split_dirs:
        used = {p.name for p in split_dirs.values()}
        for p in sorted(root.iterdir()):
            if p.name.startswith("."):
                lst.hidden += not p.is_dir()
            elif p.is_dir():
                if p.name not in used:
                    lst.warnings.append(
                        Finding("stray-folder", [p.name], "not read as a split (train, val, test): it is ignored")
                    )
            else:
                lst.files += 1
                lst.warnings.append(Finding("stray-file", [p.name], "a file outside the split folders: it is ignored"))
    for split, top in lst.split_dirs.items():
        for p in sorted(top.iterdir()):
            if p.name.startswith("."):
                lst.hidden += not p.is_dir()
            elif p.is_dir():
                lst.classes.add(p.name)
                _walk_class(lst, split, p)
            else:
                lst.files += 1
                lst.warnings.append(
                    Finding("stray-file", [_shown(p, root)], "a file outside the class folders: it is ignored")
                )
    if not lst.classes:
        raise DataError(
            f"'{root}' holds no class folders: put the images of each class in a folder of its own (e.g. {root}/cats/1.jpg)"
        )
    return lst


def _walk_class(lst: _Listing, split: str, folder: Path) -> None:
    def unreadable(e: OSError) -> None:
        lst.errors.append(Finding("unreadable", [_shown(e.filename, lst.base)], f"cannot read folder ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                lst.hidden += 1  # .DS_Store, ._x.jpg (macOS resource forks): the loader skips them too
                continue
            full = os.path.join(dirpath, f)
            lst.files += 1
            if is_image_name(f):
                lst.items.append(Item(split, folder.name, full, _shown(full, lst.base)))
            else:
                lst.warnings.append(
                    Finding("non-image-file", [_shown(full, lst.base)], "no image extension: it is ignored")
                )


def _list_csv(path: Path) -> _Listing:
    src = csv_source(path)  # the loader's own CSV rules: same columns, splits and path resolution
    lst = _Listing("csv", path.parent, classes=set(src.classes), multilabel=src.task == MULTILABEL)
    for s, split in src.splits.items():
        for i, (p, y) in enumerate(zip(split.paths, split.labels)):
            label = join_labels(split.label_names(i, src.classes)) if lst.multilabel else src.classes[y]
            lst.items.append(Item(s, label, p, _shown(p, lst.base)))
        for c, cells in (split.columns or {}).items():
            lst.columns.setdefault(c, []).extend(cells)
    lst.files = len(lst.items)
    return lst


def _list_named(src: DataSource) -> _Listing:
    """A named data set's splits as they are (no validation carved): images in memory, shown by their ids."""
    lst = _Listing("dataset", Path(src.location), classes=set(src.classes))
    for s, split in src.splits.items():
        for i, y in enumerate(split.labels):
            name = split.describe(i)
            lst.items.append(Item(s, src.classes[y], name, name, split.arrays[i]))
    lst.files = len(lst.items)
    return lst


def _group_leaks(lst: _Listing, group_by: str) -> dict:
    """--group-by: a `group-leak` error per group on more than one split; what the summary says of the groups."""
    by = parse_group_by(group_by, lst.columns, where=str(lst.base))
    splits = sorted({it.split for it in lst.items}, key=_split_order)
    index = {s: [i for i, it in enumerate(lst.items) if it.split == s] for s in splits}
    keyed = {
        s: group_keys([lst.items[i].shown for i in mine], by, {c: [v[i] for i in mine] for c, v in lst.columns.items()})
        for s, mine in index.items()
    }
    check_matched(by, keyed, where=str(lst.base))
    members: dict[str, list[str]] = defaultdict(list)
    for s, mine in index.items():
        for k, i in zip(keyed[s].keys, mine):
            members[k].append(lst.items[i].shown)
    for k, on in leaked_groups({s: g.keys for s, g in keyed.items()}).items():
        detail = (
            f"group '{k}' ({by.describe()}) is in {' and '.join(on)}: scores on {' and '.join(on[1:])} will be "
            "optimistic; move its images to one split"
        )
        lst.errors.append(Finding("group-leak", members[k], detail, group=k))
    summary = grouping_summary(group_by, keyed, carved=False)
    summary["own_notes"] = [g.own_note(s) for s, g in keyed.items() if g.own]  # each a group of its own
    return summary


def _same_pixels(readable: list[tuple[Item, tuple]], errors: list[Finding], warns: list[Finding]) -> None:
    groups: dict[bytes, list[Item]] = defaultdict(list)
    for it, info in readable:
        groups[info[4]].append(it)
    for members in groups.values():
        if len(members) < 2:
            continue
        paths = [m.shown for m in members]
        splits = sorted({m.split for m in members}, key=_split_order)
        labels = sorted({m.label for m in members})
        if len(splits) > 1:
            errors.append(
                Finding(
                    "leak-across-splits",
                    paths,
                    f"the same image is in {' and '.join(splits)}: scores on "
                    f"{' and '.join(splits[1:])} will be optimistic",
                )
            )
        if len(labels) > 1:
            errors.append(
                Finding("duplicate-across-labels", paths, f"the same image is labelled {' and '.join(labels)}")
            )
        by_place: dict[tuple[str, str], list[str]] = defaultdict(list)
        for m in members:
            by_place[(m.split, m.label)].append(m.shown)
        for (s, c), ps in by_place.items():
            if len(ps) > 1:
                warns.append(Finding("duplicate", ps, f"{len(ps)} copies of the same image in {s} class {c}"))
