"""`imgclf check DATA --deep`: the plain check, then what only a model sees: frozen features of every readable
image (`features.py`), label issues by confident learning (`labels.py`), near-duplicates and outliers
(`neighbours.py`), all in one `CheckReport` with the plain check's exit-code rules; the output folder
(check.json, the report) and fixes.csv (`--fixes`), each written whole or not at all."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.core.fileio import write_json
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.options import check_output_folder
from imgclf.data.check import CheckReport, Finding, inspect_data, report_of
from imgclf.data.fixes import FixRow, write_fixes
from imgclf.data.sources import Split
from imgclf.evaluation.report import write_check_report
from imgclf.studies.audit.features import FeatureModel, cached_split_features, input_size, l2_normalised
from imgclf.studies.audit.labels import LIKELY, check_folds, label_findings
from imgclf.studies.audit.labels_multilabel import check_multilabel_folds, multilabel_label_findings
from imgclf.studies.audit.neighbours import neighbour_findings
from imgclf.studies.audit.sheets import write_sheets

log = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"
REPORT_FILE = "check.json"
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _set(labels: str | None) -> str:
    """A label, or a multi-label image's set (`a|b`) as the text shows it: an empty set is "(no label)"."""
    return labels if labels else "(no label)"


def _sureness(f: Finding) -> str:
    return f"score {f.score:.3g}" + (f", P(wrong) {f.wrong:.2f}" if f.wrong is not None else "")


@dataclass
class DeepResult:
    report: CheckReport
    out: str  # the output folder
    fixes: str | None = None  # fixes.csv, when asked for
    report_html: str | None = None
    notes: list[str] = field(default_factory=list)

    def format_text(self, top: int = 10) -> str:
        lines = [self.report.format_text(), ""]
        deep = self.report.summary.get("deep", {})
        lab = deep.get("labels", {})
        lines.append(f"deep check with {deep.get('model')} at {deep.get('img_size')} px ({deep.get('cache')})")
        if lab:
            how = f"mAP {lab['cv_mAP']:.3f}" if "cv_mAP" in lab else f"accuracy {lab['cv_accuracy']:.3f}"
            lines.append(
                f"label issues: {lab['issues']} of {lab['images']} images ({lab['classifier']}, cross-validated {how})"
            )
            if "likely_wrong" in lab:
                fixes = ": --fixes suggests relabelling those, the rest to review" if self.fixes else ""
                lines.append(
                    f"  {lab['likely_wrong']} likely wrong (P(label wrong) >= {LIKELY:g}; estimated "
                    f"{lab['noise_rate']:.1%} of labels wrong){fixes}"
                )
        suspects = [f for f in self.report.warnings if f.kind == "label"][:top]
        lines += [f"  {f.paths[0]}: {_set(f.label)} -> {_set(f.suggested)} ({_sureness(f)})" for f in suspects]
        if deep.get("neighbours"):
            lines.append(deep["neighbours"])
        lines += self.notes
        lines.append(f"folder: {self.out} ({REPORT_FILE})")
        if self.fixes:
            lines.append(f"fixes: {self.fixes} (review it, then --apply-fixes)")
        if self.report_html:
            lines.append(f"report: {self.report_html} (contact sheets: sheet-KIND.png beside it)")
        return "\n".join(lines)


def default_out(data: str) -> str:
    """checks/<data name>: the data folder's name, or the CSV manifest's name without .csv."""
    p = Path(str(data)).expanduser().resolve()
    return os.path.join("checks", p.stem if p.is_file() else p.name)


def check_out(out: str) -> None:
    """Refuse, before any work, an output folder that holds something other than an earlier check."""
    check_output_folder(out, "--out")
    if os.path.isfile(out):
        raise UsageError(f"--out '{out}' is a file: pass a folder for check.json")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, REPORT_FILE)):
        raise UsageError(f"--out '{out}' holds other files and no {REPORT_FILE}: choose an empty or new folder")


def check_request(data: str, *, model: str, folds: int, out: str | None, fixes: str | None) -> str:
    """Every check of the options that needs no decoding; returns the output folder."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    FeatureModel.check(model, "--model")
    out = out or default_out(data)
    check_out(out)
    if fixes is not None:
        if os.path.isdir(fixes):
            raise UsageError(f"--fixes '{fixes}' is a folder: pass a file name such as fixes.csv")
        check_output_folder(os.path.dirname(os.path.abspath(fixes)), "--fixes")
    return out


def deep_check(
    data: str,
    *,
    model: str = DEFAULT_MODEL,
    folds: int = 5,
    out: str | None = None,
    fixes: str | None = None,
    device: str = "auto",
    batch_size: int = 128,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = False,
    apply_fixes: str | None = None,
    **check_kw,
) -> DeepResult:
    """The plain check plus the deep findings; writes OUT/check.json, its report and sheets (and `fixes`, the
    findings as a fixes.csv to review). `apply_fixes`: a reviewed fixes.csv, the data checked as it leaves it.
    `check_kw` goes to `inspect_data` (`group_by`, `data_root`)."""
    out = check_request(data, model=model, folds=folds, out=out, fixes=fixes)
    start = time.perf_counter()
    ins = inspect_data(data, workers=workers, progress=progress, phash=True, fixes=apply_fixes, **check_kw)
    report = report_of(ins)
    readable = [i for i, ok in enumerate(ins.readable) if ok]
    items = [ins.items[i] for i in readable]
    multi = report.summary.get("task") == MULTILABEL  # label sets: labels_multilabel.py
    if multi:  # on the readable images, before any feature is computed
        check_multilabel_folds([it.label for it in items], report.summary["classes"], folds)
    else:
        check_folds(_counts(report), folds)
    fm = FeatureModel.open(model, 2, img_size=input_size(model, _shorter_side(report)), device=device, flag="--model")
    x, kept, hit = cached_split_features(fm, _as_split(items), batch_size=batch_size, workers=workers)
    kept_items = [items[i] for i in kept]
    infos = [ins.infos[readable[i]] for i in kept]
    shown, labels = [it.shown for it in kept_items], [it.label for it in kept_items]
    source = f"{fm.name} features" if not fm.checkpoint else f"the backbone of checkpoint {model} (its head refit)"
    find = multilabel_label_findings if multi else label_findings
    found, lab = find(x, labels, shown, report.summary["classes"], folds=folds, seed=seed, source=source)
    found += neighbour_findings(
        shown,
        [it.split for it in kept_items],
        labels,
        l2_normalised(x),
        [i.phash for i in infos],
        digests=[i.digest for i in infos],
        sides=[min(i.width, i.height) for i in infos],
    )
    split_of = {it.shown: it.split for it in ins.items}
    _merge(report, found, split_of)
    report.summary["deep"] = {
        "model": fm.label,
        "img_size": fm.prep.img_size,
        "images": len(kept),
        "features": int(x.shape[1]),
        "cache": "features from the cache" if hit else "features computed and cached",
        "labels": lab,
        "neighbours": _neighbours_line(found),
        "seconds": round(time.perf_counter() - start, 2),
    }
    images = {it.shown: it.array for it in ins.items if it.array is not None} or None
    return _write(DeepResult(report, out), fixes, split_of, images)


def _counts(report: CheckReport) -> dict[str, int]:
    """Readable images per class, every split together."""
    counts: dict[str, int] = {}
    for per_class in report.summary["classes_per_split"].values():
        for c, n in per_class.items():
            counts[c] = counts.get(c, 0) + n
    return counts


def _neighbours_line(found: list[Finding]) -> str:
    n = {k: sum(f.kind == k for f in found) for k in ("near-duplicate-across-splits", "near-duplicate", "outlier")}
    return (
        f"near-duplicates: {n['near-duplicate-across-splits']} clusters across splits, {n['near-duplicate']} within "
        f"a split; outliers: {n['outlier']}"
    )


def _shorter_side(report: CheckReport) -> int | None:
    size = report.summary.get("image_size")
    return min(size["width"]["median"], size["height"]["median"]) if size else None


def _as_split(items) -> Split:
    """The listed images as one Split for decoding: files, or in-memory arrays (named sources)."""
    if all(it.array is None for it in items):
        return Split("all", [0] * len(items), paths=[it.path for it in items])
    arrays = np.stack([it.array for it in items])
    return Split("all", [0] * len(items), arrays=arrays, ids=[it.shown for it in items])


def _merge(report: CheckReport, found: list[Finding], split_of: dict[str, str]) -> None:
    """Deep findings into the report: a near-duplicate across splits is an error (a leak, as an exact copy
    is), everything else a warning (label issues ranked worst first, as found)."""
    for f in found:
        copies = f.kind in ("near-duplicate", "near-duplicate-across-splits")
        cross = copies and len({split_of.get(p) for p in f.paths}) > 1
        (report.errors if cross else report.warnings).append(f)


def fix_rows(report: CheckReport, split_of: dict[str, str]) -> list[FixRow]:
    """One row per finding and image, with a suggested action for a person to review."""
    rows: list[FixRow] = []
    for f in report.errors + report.warnings:
        if f.kind == "label":
            rows.append(_label_row(f))
        elif f.kind in ("near-duplicate", "near-duplicate-across-splits", "leak-across-splits", "duplicate"):
            rows += _keep_first(f, split_of)
        elif f.kind in ("outlier", "group-leak", "duplicate-across-labels"):
            rows += [FixRow(p, f.kind, "keep", f.label or "", "", f.score, f.group or "", f.detail) for p in f.paths]
    # one action per image, or --apply-fixes refuses the file: a copy that goes is not also relabelled
    dropped = {r.path for r in rows if r.action == "drop"}
    return [
        replace(r, action="keep", detail=f"{r.detail}; keep: a near-duplicate row drops this image")
        if r.action == "relabel" and r.path in dropped
        else r
        for r in rows
    ]


def _label_row(f: Finding) -> FixRow:
    """relabel where the label is more likely wrong than right (single-label: P(label wrong) >= LIKELY; a
    multi-label set: where one is suggested, as it may be no label at all); otherwise keep, to review."""
    sure = f.suggested and (f.wrong is None or f.wrong >= LIKELY)
    detail = f.detail if sure or f.wrong is None else f"{f.detail}; keep: review it, P(label wrong) under {LIKELY:g}"
    return FixRow(
        f.paths[0], "label", "relabel" if sure else "keep", f.label or "", f.suggested or "", f.score, "", detail
    )


def _keep_first(f: Finding, split_of: dict[str, str]) -> list[FixRow]:
    """Copies: across splits the earliest split's copy stays (train before val before test) and the others go;
    within a split the first stays."""
    order = sorted(f.paths, key=lambda p: _SPLIT_ORDER.get(split_of.get(p, ""), 3))
    keep = order[0]
    kind = "near-duplicate" if f.kind.startswith("near-duplicate") else f.kind  # fixes.csv's KINDS
    return [
        FixRow(p, kind, "keep" if p == keep else "drop", f.label or "", "", f.score, f.group or "", f.detail)
        for p in f.paths
    ]


def _write(res: DeepResult, fixes: str | None, split_of: dict[str, str], images: dict | None) -> DeepResult:
    """check.json, then the contact sheets and report.html made from it (and fixes.csv), each whole or not at
    all: a stopped check leaves the files it finished and no half of one."""
    os.makedirs(res.out, exist_ok=True)
    if fixes:
        write_fixes(fix_rows(res.report, split_of), fixes)
        res.fixes = fixes
    write_json(res.report.to_dict(), os.path.join(res.out, REPORT_FILE))
    write_sheets(res.report.to_dict(), res.out, images=images)
    res.report_html = write_check_report(res.out, images=images)
    return res
