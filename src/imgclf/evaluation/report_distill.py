"""The "Distillation" section of a run trained with `--teacher`: student and teacher side by side on the run's
own validation split (accuracy, file size), and the commands that give the rest (their speed, and the same
student trained without a teacher: benchmarks/distill.py runs both)."""

from __future__ import annotations

import os

from imgclf.evaluation.report_folder import Folder, Missing
from imgclf.evaluation.report_sections import escape


def has_teacher(f: Folder) -> bool:
    return bool((f.results or {}).get("teacher"))


def _mb(path: str | None) -> str:
    return f"{os.path.getsize(path) / 2**20:.1f} MB" if path and os.path.isfile(path) else "-"


def _acc(v) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "-"


def section_distill(f: Folder) -> str:
    t = (f.results or {}).get("teacher")
    if not t:
        raise Missing("the run had no --teacher")
    res, cfg = f.results or {}, f.config or {}
    student = (res.get("best") or {}).get("accuracy")
    n = (res.get("best") or {}).get("num_images")
    size_t = f"{t['size_mb']:.1f} MB" if t.get("size_mb") is not None else "-"
    rows = [
        ("student (this run)", cfg.get("model") or res.get("model", "?"), _acc(student), _mb(f.weights)),
        ("teacher", f"{t.get('model')} ({t.get('format')})", _acc(t.get("val_acc")), size_t),
    ]
    head = "<tr><th></th><th>model</th><th>val accuracy</th><th>file</th></tr>"
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    bench = f"imgclf bench {f.weights or 'best.pt'} {t.get('source')} --data {cfg.get('data', 'DATA')}"
    return (
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
        f'<p class="note">the same {escape(n if n is not None else "")} validation images for both; the loss: '
        f"(1 - {escape(t.get('weight'))}) x the usual loss + {escape(t.get('weight'))} x T&sup2; x KL(teacher || "
        f"student) at T = {escape(t.get('temperature'))}"
        f"{'; the teacher&#39;s classes mapped by name' if t.get('classes_mapped') else ''}. "
        f"Images/s of both: <code>{escape(bench)}</code>. The same student without a teacher: the run's options "
        "without --teacher (<code>benchmarks/distill.py</code> trains both and prints them side by side).</p>"
    )
