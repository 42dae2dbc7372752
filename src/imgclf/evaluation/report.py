"""report.html: one self-contained page for a run or an evaluation folder, to look at rather than read.

`build_report(folder)` fills templates/report.html with what the folder holds: the machine and the data, the
training curves, the confusion matrix and its most-confused pairs, the per-class table (sortable), the
reliability diagram and ECE, the most confident mistakes with their Grad-CAM, the data check's findings and the
exports made next to the checkpoint with their parity (and speed, where a bench JSON is there), and for an
evaluation made with --ood-data the out-of-distribution scores (report_ood.py). A multi-label
model's folder has report_multilabel.py's sections instead: per label (AP, threshold, P, R, F1, ECE), calibration
per label, and the errors by true label. Every image is
inlined as a data: URI and the CSS and the few lines of JS are in the page, so it opens from a file, offline,
and makes no request (its Content-Security-Policy forbids any). A section whose data is absent is one line
saying why; a section that fails to build is that line too (with the error), never a failed report.

Training (rank 0, after results.json) and `evaluate` (with plots) call it; `imgclf report FOLDER` rebuilds it.
"""

from __future__ import annotations

import logging
import os
import string
import time

from imgclf.core.fileio import atomic_open
from imgclf.evaluation.report_distill import has_teacher, section_distill
from imgclf.evaluation.report_folder import Folder, Missing, open_folder, set_predictions
from imgclf.evaluation.report_multilabel import SECTIONS as MULTILABEL_SECTIONS
from imgclf.evaluation.report_multilabel import is_multilabel
from imgclf.evaluation.report_ood import section_ood
from imgclf.evaluation.report_sections import (
    escape,
    section_check,
    section_confusion,
    section_curves,
    section_data,
    section_exports,
    section_gallery,
    section_machine,
    section_per_class,
    section_reliability,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "report.html")

SECTIONS = (
    ("machine", "Machine", section_machine),
    ("data", "Data", section_data),
    ("curves", "Training curves", section_curves),
    ("distill", "Distillation: student and teacher", section_distill),
    ("confusion", "Confusion matrix", section_confusion),
    ("per-class", "Per class", section_per_class),
    ("reliability", "Calibration", section_reliability),
    ("mistakes", "Most confident mistakes", section_gallery),
    ("check", "Data checks", section_check),
    ("exports", "Exports: parity and speed", section_exports),
    ("ood", "Out-of-distribution", section_ood),
)


def _section(f: Folder, key: str, title: str, fill) -> tuple[str, bool]:
    """(the section's HTML, whether it has content); a missing or failing one is one line saying why."""
    try:
        body = fill(f)
    except Missing as e:
        return _left_out(key, title, e), False
    except Exception as e:  # a convenience page: one section's failure never costs the others
        log.warning("report: the %s section could not be built: %s: %s", key, type(e).__name__, e)
        first = str(e).splitlines()[0] if str(e) else ""
        return _left_out(key, title, f"could not be built ({type(e).__name__}: {first})"), False
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>', True


def _left_out(key: str, title: str, why) -> str:
    return f'<section class="missing" id="{key}"><h2>{escape(title)}</h2><p>left out: {escape(why)}</p></section>'


# a check folder (`imgclf check --deep --out DIR`: check.json and no model) shows these alone
CHECK_SECTIONS = ("machine", "check")
EVALUATION_ONLY = ("ood",)  # what only `imgclf evaluate` measures (--ood-data): not a run's section


def render(f: Folder) -> str:
    """The page for folder `f`, as a string."""
    parts, shown = [], []
    multi = f.kind != "check" and is_multilabel(f)
    for key, title, fill in SECTIONS:
        if f.kind == "check" and key not in CHECK_SECTIONS:
            continue
        if f.kind != "evaluation" and key in EVALUATION_ONLY:
            continue
        if key == "distill" and not has_teacher(f):  # only a run trained with --teacher has one
            continue
        if multi and key in MULTILABEL_SECTIONS:  # a multi-label model's own sections (report_multilabel.py)
            title, fill = MULTILABEL_SECTIONS[key]
        part, ok = _section(f, key, title, fill)
        parts.append(part)
        if ok:
            shown.append(f'<a href="#{key}">{escape(title)}</a>')
    name = os.path.basename(f.path)
    if f.kind == "evaluation":
        name = f"{os.path.basename(os.path.dirname(f.path))}/{name}"
    title = f"imgclf {f.kind}: {name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    header = (
        f"<header><h1>{escape(title)}</h1><p>{escape(f.path)} &middot; built {escape(stamp)} &middot; rebuild with "
        f"<code>imgclf report {escape(f.path)}</code></p></header><nav>{''.join(shown)}</nav>"
    )
    with open(TEMPLATE, encoding="utf-8") as fh:
        page = string.Template(fh.read())
    return page.substitute(title=escape(title), body=header + "<main>" + "".join(parts) + "</main>")


def build_report(path: str, *, predictions: tuple | None = None, images: dict | None = None) -> str:
    """Write PATH/report.html for a run folder (runs/NAME), an evaluation folder (eval-SPLIT) or a check folder
    (check.json) and return its path. `predictions`: (logits, labels in the model's class order, the Split they
    are of, the runner), when the caller has them already (evaluate), so that they are not computed again.
    `images`: {id: H x W x 3 uint8} for the data checks' thumbnails of in-memory images (digits, cifar10)."""
    f = open_folder(path)
    if predictions is not None:
        set_predictions(f, *predictions)
    if images is not None:
        f.cache["images"] = images
    page = render(f)
    out = f.file(REPORT_NAME)
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write(page)
    log.info("wrote %s", out)
    return out


def write_check_report(folder: str, *, images: dict | None = None) -> str:
    """report.html for a folder that holds check.json (a `CheckReport.to_dict()`): the data checks, a table per
    finding kind with thumbnails. `images`: in-memory images by id, for a source named (digits, cifar10)."""
    return build_report(folder, images=images)
