"""report.html's "Out-of-distribution" section (report.py) for an evaluation made with `--ood-data`: per score, its
AUROC, FPR at 95% TPR and the rejected fractions at the stored threshold (eval.json's "ood" block, written by
evaluation/ood_eval.py), and the histograms of the known and unknown images' scores."""

from __future__ import annotations

from imgclf.evaluation.ood_eval import DEFINITIONS, plot_name
from imgclf.evaluation.plots import plot_ood_histogram
from imgclf.evaluation.report_folder import Folder, Missing
from imgclf.evaluation.report_sections import _drawn, _png_file, escape


def _cell(v, fmt: str) -> str:
    return "<td class='num'>-</td>" if v is None else f"<td class='num'>{format(v, fmt)}</td>"


def section_ood(f: Folder) -> str:
    o = (f.eval or {}).get("ood")
    if not o:
        raise Missing("evaluated without --ood-data (imgclf evaluate WEIGHTS --ood-data DIR measures it)")
    rows = "".join(
        f"<tr><td>{escape(name)}</td>{_cell(s['auroc'], '.4f')}{_cell(s['fpr_at_95_tpr'], '.4f')}"
        f"{_cell(s['threshold'], '.4g')}{_cell(s['rejected_unknown'], '.1%')}{_cell(s['rejected_known'], '.1%')}</tr>"
        for name, s in o["scores"].items()
    )
    head = "".join(
        f"<th{' class=num' if i else ''}>{escape(h)}</th>"
        for i, h in enumerate(
            ("score", "AUROC", "FPR at 95% TPR", "stored threshold", "unknown rejected", "known rejected")
        )
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    figures = "".join(f"<div>{_figure(f, name, s)}</div>" for name, s in o["scores"].items())
    stored = o.get("note") or (
        f"the stored thresholds accept {o['stored']['accept']:.0%} of the validation images they were fitted on"
    )
    n = len(o.get("left_out") or ())
    left = f"; {n} unreadable file{'s' * (n != 1)} left out (eval.json lists them)" if n else ""
    return (
        f"<p>{o['unknown_images']} unknown images ({escape(o['data'])}) against {o['known_images']} known "
        f"({escape(o['split'])}){escape(left)}. {escape(stored[0].upper() + stored[1:])}.</p>{table}"
        f"<p>AUROC: {escape(DEFINITIONS['auroc'])}. FPR at 95% TPR: {escape(DEFINITIONS['fpr_at_95_tpr'])}.</p>"
        f"<div class='row'>{figures}</div>"
    )


def _figure(f: Folder, name: str, s: dict) -> str:
    alt = f"{name} score histograms, known and unknown"
    if f.has(plot_name(name)):
        return _png_file(f.file(plot_name(name)), alt)
    return _drawn(plot_ood_histogram, s["histogram"], alt=alt, score=name, threshold=s["threshold"])
