"""`imgclf check DATA`: find what would break or quietly spoil training before a run is spent on it.

Every image is fully decoded (a JPEG cut in half opens fine and only fails on decode) and hashed by its
decoded pixels, so byte copies and re-encoded copies with other metadata both count as the same image.
Paths in findings are relative to the data folder (or to the CSV's folder).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from imgclf.core.errors import DataError
from imgclf.data.balance import SAMPLER_FROM, imbalance_ratio
from imgclf.data.images import BadShape, UnreadableImage, check_pixels, check_shape, load_image, max_pixels, to_rgb
from imgclf.data.sources import csv_source, find_split_dirs, is_image_name

log = logging.getLogger(__name__)

_ALWAYS = ("kind", "paths", "detail")

IMBALANCE_WARN_RATIO = SAMPLER_FROM  # where check warns is where `--balance auto` turns to the sampler
TINY_PIXELS = 8
# The text report stays readable on a folder with thousands of stray files or classes; --json has everything.
TEXT_LIMIT_PER_KIND = 20
TEXT_LIMIT_CLASSES = 40
SERIAL_BELOW = 64  # starting worker processes costs more than decoding a handful of images

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
    """One thing found. The deep checks (`check --deep`) also fill the review fields: `label` (the label given),
    `suggested` (the label the model prefers), `score` (how sure the finding is; its meaning is per kind) and
    `group` (a near-duplicate cluster or a group that names the finding's images together)."""

    kind: str
    paths: list[str]
    detail: str
    label: str | None = None
    suggested: str | None = None
    score: float | None = None
    group: str | None = None

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
            width = max(len(c) for c in ["class", *classes[:TEXT_LIMIT_CLASSES]])
            row = lambda name, cells: "  " + "  ".join([f"{name:<{width}}", *(f"{x:>8}" for x in cells)])  # noqa: E731
            lines += ["", row("class", per_split)]
            lines += [row(c, [per_split[n][c] for n in per_split]) for c in classes[:TEXT_LIMIT_CLASSES]]
            if len(classes) > TEXT_LIMIT_CLASSES:
                lines.append(f"  ... and {len(classes) - TEXT_LIMIT_CLASSES} more classes (see --json)")
            lines.append(row("total", [sum(v.values()) for v in per_split.values()]))
        ratio = s.get("imbalance_ratio")
        lines.append("class imbalance (largest/smallest in train): " + (f"{ratio:.2f}" if ratio is not None else "n/a"))
        size = s.get("image_size")
        if size:
            w, h = size["width"], size["height"]
            lines.append(
                f"image size (min/median/max): width {w['min']}/{w['median']}/{w['max']}, "
                f"height {h['min']}/{h['median']}/{h['max']}; {size['distinct']} distinct size{'s' * (size['distinct'] != 1)}"
            )
        if s.get("modes"):
            lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()))
        if s.get("hidden_files"):
            lines.append(f"hidden files skipped: {s['hidden_files']}")
        ne, nw = len(self.errors), len(self.warnings)
        lines.append(f"{ne} error{'s' * (ne != 1)}, {nw} warning{'s' * (nw != 1)} in {s.get('files', 0)} files")
        return "\n".join(lines)


@dataclass
class _Item:
    split: str
    label: str
    path: str  # absolute, for decoding
    shown: str  # relative, for findings


@dataclass
class _Listing:
    layout: str  # splits | classes | csv
    base: Path  # findings show paths relative to this
    split_dirs: dict[str, Path] = field(default_factory=dict)
    items: list[_Item] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    files: int = 0
    hidden: int = 0

    def place(self, split: str, cls: str) -> str:
        """Where a class of a split is, as findings show it: its folder, or split:class in a CSV."""
        return _shown(self.split_dirs[split] / cls, self.base) if split in self.split_dirs else f"{split}:{cls}"


def check_data(data: str, *, workers: int | None = None, progress: bool = False) -> CheckReport:
    """Decode every image under `data`; errors are what would break or falsify training, warnings what may spoil it."""
    start = time.perf_counter()
    path = Path(str(data)).expanduser()
    lst = _list_data(path, data)
    results = _decode_all([it.path for it in lst.items], workers=workers, progress=progress)
    readable, failed = _per_image(lst, results)
    _same_pixels(readable, lst.errors, lst.warnings)

    classes = sorted(lst.classes)
    splits = sorted({it.split for it in lst.items} | set(lst.split_dirs), key=_split_order)
    per_split = {s: {c: 0 for c in classes} for s in splits}
    for it, _ in readable:
        per_split[it.split][it.label] += 1
    _empty_classes(lst, per_split, failed)
    ratio = _imbalance(lst, readable, per_split)

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
        "image_size": _size_summary(infos),
        "modes": dict(Counter(i[1] for i in infos).most_common()),
        "formats": dict(Counter(i[0] for i in infos).most_common()),
        "seconds": round(time.perf_counter() - start, 2),
    }
    order = {k: i for i, k in enumerate(_KIND_ORDER)}
    key = lambda f: (order.get(f.kind, len(order)), f.paths)  # noqa: E731
    return CheckReport(str(path.resolve()), sorted(lst.errors, key=key), sorted(lst.warnings, key=key), summary)


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


def _per_image(lst: _Listing, results: list[tuple[str, object]]) -> tuple[list[tuple[_Item, tuple]], Counter]:
    """(the readable items with what decoding found, failures by (split, class)); what is wrong with each file
    goes to the listing's errors and warnings."""
    readable: list[tuple[_Item, tuple]] = []
    failed: Counter = Counter()
    for it, (status, info) in zip(lst.items, results):
        if status != "ok":
            lst.errors.append(Finding(status, [it.shown], info))
            failed[(it.split, it.label)] += 1
            continue
        readable.append((it, info))
        fmt, _, w, h, _ = info
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


def _imbalance(lst: _Listing, readable: list[tuple[_Item, tuple]], per_split: dict) -> float | None:
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
    "extension-mismatch",
    "duplicate",
    "class-imbalance",
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
                lst.items.append(_Item(split, folder.name, full, _shown(full, lst.base)))
            else:
                lst.warnings.append(
                    Finding("non-image-file", [_shown(full, lst.base)], "no image extension: it is ignored")
                )


def _list_csv(path: Path) -> _Listing:
    src = csv_source(path)  # the loader's own CSV rules: same columns, splits and path resolution
    lst = _Listing("csv", path.parent, classes=set(src.classes))
    for s, split in src.splits.items():
        for p, y in zip(split.paths, split.labels):
            lst.items.append(_Item(s, src.classes[y], p, _shown(p, lst.base)))
    lst.files = len(lst.items)
    return lst


def _decode_all(paths: list[str], *, workers: int | None, progress: bool) -> list[tuple[str, object]]:
    n = workers or os.cpu_count() or 1
    out: list[tuple[str, object]] = []
    with tqdm(total=len(paths), desc="check", unit="img", file=sys.stderr, disable=not progress) as bar:
        if n <= 1 or len(paths) < SERIAL_BELOW:
            for p in paths:
                out.append(_inspect(p, max_pixels()))
                bar.update()
            return out
        # Processes, not threads: decoding tiny JPEGs is GIL-bound (threads were slower on CIFAR-10: see
        # docs/benchmarks.md).
        # Chunks amortise the pickling, but stay small enough that a few large photos spread over all workers.
        chunk = max(1, min(256, len(paths) // (n * 8)))
        with ProcessPoolExecutor(n) as ex:
            for r in ex.map(_inspect, paths, itertools.repeat(max_pixels()), chunksize=chunk):
                out.append(r)
                bar.update()
    return out


def _inspect(path: str, limit: int) -> tuple[str, object]:
    """("ok", (format, mode, width, height, pixel hash)) or (error kind, reason). Runs in worker processes;
    `limit`: the pixel limit (--max-pixels), passed along as a worker may not share this process's."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte", "zero-byte file"
    except OSError as e:
        return "unreadable", f"cannot read ({e.strerror})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                fmt, mode = im.format, im.mode
                check_pixels(*im.size, limit)  # what training would refuse: before decoding, which could take
                check_shape(*im.size)  # gigabytes
                im.load()  # the full decode: open() and verify() both pass a JPEG cut in half
                rgb = to_rgb(im)
    except BadShape as e:
        return "bad-shape", str(e)
    except Exception as first:
        # Take the reason from the loader that training uses, so check and training agree on what is broken.
        try:
            load_image(path)
        except UnreadableImage as e:
            reason = str(e)
        except Exception as e:  # the loader does not catch it: training would crash on this file
            reason = f"{type(e).__name__}: {e}"
        else:
            reason = f"{type(first).__name__}: {first}"
        return _error_kind(reason), reason
    w, h = rgb.size
    digest = hashlib.blake2b(f"{w}x{h}".encode(), digest_size=16)
    digest.update(rgb.tobytes())
    return "ok", (fmt, mode, w, h, digest.digest())


def _error_kind(reason: str) -> str:
    if reason.startswith("zero-byte"):
        return "zero-byte"
    if "truncated" in reason:
        return "truncated"
    if reason.startswith("not an image"):
        return "not-an-image"
    return "unreadable"


def _same_pixels(readable: list[tuple[_Item, tuple]], errors: list[Finding], warns: list[Finding]) -> None:
    groups: dict[bytes, list[_Item]] = defaultdict(list)
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


def _size_summary(infos: list[tuple]) -> dict | None:
    if not infos:
        return None
    ws, hs = [i[2] for i in infos], [i[3] for i in infos]
    sizes = Counter((i[2], i[3]) for i in infos)
    (cw, ch), cn = sizes.most_common(1)[0]
    return {
        "width": {"min": min(ws), "median": statistics.median_low(ws), "max": max(ws)},
        "height": {"min": min(hs), "median": statistics.median_low(hs), "max": max(hs)},
        "distinct": len(sizes),
        "most_common": {"width": cw, "height": ch, "count": cn},
    }


def listed_items(data: str) -> list[_Item]:
    """What `check` reads, image by image (split, label, path, shown path), in its order: the deep checks'
    input (studies/audit/deep.py)."""
    return _list_data(Path(str(data)).expanduser(), data).items
