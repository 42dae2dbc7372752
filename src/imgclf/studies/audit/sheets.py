"""Contact sheets of a data check's findings: one PNG per finding kind (`sheet-KIND.png`), each image of each
finding with its path and, where the deep checks filled them, its label, the suggested label and the score
(studies/figures.py's contact sheet). For a quick look before the table in report.html or fixes.csv."""

from __future__ import annotations

import os
import re

import numpy as np

from imgclf.data.fixes import locate
from imgclf.studies.figures import contact_sheet

SHEET_NAME = "sheet-{kind}.png"
_BLANK = np.full((32, 32, 3), 128, dtype=np.uint8)  # an image neither on disk nor given: a grey square


def sheet_rows(findings: list[dict], data: str | None, images: dict | None = None) -> list[dict]:
    """The contact sheet's rows of one kind's findings (CheckReport.to_dict()'s), in their order, each image once:
    files found from the finding's paths under `data` (CheckReport.data), or `images` ({id: H x W x 3 uint8})
    for in-memory sources."""
    rows, seen = [], set()
    for x in findings:
        for shown in x.get("paths") or []:
            if shown in seen:
                continue
            seen.add(shown)
            row = {"path": str(shown), "caption": _caption(x), "listed_in": "check.json"}
            if images and shown in images:
                row["image"] = np.asarray(images[shown], dtype=np.uint8)
            elif locate(str(shown), data) is None or not os.path.isfile(locate(str(shown), data)):
                row["image"] = _BLANK
            else:
                row["path"] = locate(str(shown), data)
            rows.append(row)
    return rows  # the sheet draws the first SHEET_MAX and says how many more check.json lists


def _caption(x: dict) -> str:
    if x.get("suggested") is not None or x.get("label") is not None:
        score = x.get("score")
        return f"{x.get('label') or '?'} -> {x.get('suggested') or '?'}" + ("" if score is None else f" {score:.3g}")
    if x.get("group"):
        return str(x["group"])
    detail = str(x.get("detail") or "")
    return detail if len(detail) <= 30 else detail[:27] + "..."


def write_sheets(report: dict, out: str, *, images: dict | None = None) -> list[str]:
    """OUT/sheet-KIND.png for each finding kind of `report` (a CheckReport.to_dict()) whose findings name images;
    the paths written. Each sheet appears whole or not at all (figures.save_figure)."""
    by_kind: dict[str, list[dict]] = {}
    for x in [*(report.get("errors") or []), *(report.get("warnings") or [])]:
        by_kind.setdefault(str(x.get("kind")), []).append(x)
    os.makedirs(out, exist_ok=True)
    written = []
    for kind, findings in by_kind.items():
        rows = sheet_rows(findings, report.get("data"), images)
        if not rows:
            continue
        path = os.path.join(out, SHEET_NAME.format(kind=re.sub(r"[^A-Za-z0-9_.-]+", "_", kind)))
        contact_sheet(rows, path, title=f"{kind}: {len(findings)} finding{'s' * (len(findings) != 1)}")
        written.append(path)
    return written
