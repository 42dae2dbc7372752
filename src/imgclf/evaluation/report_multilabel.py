"""report.html's sections for a multi-label model (evaluation or run folder): the per-label table (AP, threshold,
precision, recall, F1, support, ECE) with mAP, the calibration of the labels' sigmoid scores, and the errors by
true label (multilabel_eval.py). report.py uses them in place of the single-label sections of the same keys."""

from __future__ import annotations

import numpy as np

from imgclf.core.multilabel import MULTILABEL
from imgclf.evaluation.multilabel_eval import error_pairs, multilabel_evaluation
from imgclf.evaluation.plots import plot_confusion, plot_reliability
from imgclf.evaluation.report_folder import Folder, Missing, predictions
from imgclf.evaluation.report_sections import _drawn, _png_file, escape


def is_multilabel(f: Folder) -> bool:
    """Whether the folder is of a multi-label model: its eval.json or results.json says so, or its config."""
    for d in (f.eval, f.results, f.config):
        if isinstance(d, dict) and d.get("task") == MULTILABEL:
            return True
    return False


def multilabel_folder_metrics(f: Folder) -> dict:
    """eval.json's measures; for a run, those of its best checkpoint on validation, computed here (results.json's
    where the weights are not there)."""
    if f.kind == "evaluation":
        return f.eval
    if "ml_metrics" not in f.cache:
        try:
            p = predictions(f)
        except Missing:
            if isinstance(f.results, dict) and f.results.get("per_label"):
                return f.results
            raise
        r = p["runner"]
        m = multilabel_evaluation(r.probabilities(p["logits"]).numpy(), p["labels"].numpy(), r.thresholds, r.classes)
        m["calibration"]["temperature"] = r.temperature
        f.cache["ml_metrics"] = m
    return f.cache["ml_metrics"]


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


def section_per_label(f: Folder) -> str:
    m = multilabel_folder_metrics(f)
    per = m.get("per_label")
    if not per:
        raise Missing("no per-label metrics")
    ece = (m.get("calibration") or {}).get("ece_per_label") or {}
    keys = ("ap", "threshold", "precision", "recall", "f1")
    head = "<th>label</th>" + "".join(f"<th class=num>{k}</th>" for k in ("AP", *keys[1:], "support"))
    head += "<th class=num>ECE</th>" if ece else ""
    body = "".join(
        f"<tr><td>{escape(c)}</td>"
        + "".join(f"<td class='num' data-v='{_f(r.get(k), '.6g')}'>{_f(r.get(k))}</td>" for k in keys)
        + f"<td class='num'>{int(r['support'])}</td>"
        + (f"<td class='num' data-v='{_f(ece.get(c), '.6g')}'>{_f(ece.get(c))}</td>" if ece else "")
        + "</tr>"
        for c, r in per.items()
    )
    line = (
        f"mAP {_f(m.get('mAP'))} (micro {_f(m.get('micro_mAP'))}), micro-F1 {_f(m.get('micro_f1'))}, macro-F1 "
        f"{_f(m.get('macro_f1'))}, exact match {_f(m.get('exact_match'))}, Hamming loss {_f(m.get('hamming_loss'))}"
        f", {m.get('num_images')} images, at each label's threshold"
    )
    if m.get("threshold_goal"):
        line += f" (fitted for {m['threshold_goal']})"
    half = m.get("at_0.5")
    extra = (
        f"<p>at 0.5 for every label: micro-F1 {_f(half['micro_f1'])}, exact match {_f(half['exact_match'])}, "
        f"Hamming loss {_f(half['hamming_loss'])}</p>"
        if half
        else ""
    )
    return (
        f"<p>{escape(line)}</p>{extra}<table class='sortable' id='per-label'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table><p class='note'>click a header to sort</p>"
    )


def section_label_reliability(f: Folder) -> str:
    c = multilabel_folder_metrics(f).get("calibration")
    if not c or "reliability" not in c:
        raise Missing("no per-label calibration in the metrics")
    names = {"xlabel": "probability of a label (every image and label)", "ylabel": "fraction positive"}
    if f.kind == "evaluation" and f.has("reliability.png"):
        picture = _png_file(f.file("reliability.png"), "reliability diagram")
    else:
        picture = _drawn(plot_reliability, c["reliability"], c["ece"], alt="reliability diagram", **names)
    t = c.get("temperature", 1.0)
    how = "not calibrated (imgclf calibrate fits a temperature per label)"
    if isinstance(t, list):
        how = "a temperature per label (imgclf calibrate): " + ", ".join(f"{v:.3g}" for v in t)
    elif t != 1.0:
        how = f"temperature {t:.4g}"
    rows = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{_f(v)}</td></tr>" for k, v in c["ece_per_label"].items())
    table = f"<table><thead><tr><th>label</th><th class='num'>ECE</th></tr></thead><tbody>{rows}</tbody></table>"
    return (
        f"<p>ECE ({c.get('ece_bins', 15)} bins) mean over labels <b>{_f(c['ece_mean'])}</b>, pooled over every "
        f"image and label {_f(c['ece'])}; {escape(how)}</p>"
        f'<div class="row"><div>{picture}</div><div>{table}</div></div>'
    )


def section_label_errors(f: Folder) -> str:
    m = multilabel_folder_metrics(f)
    e = m.get("errors")
    if not e:
        raise Missing("no error counts in the metrics")
    if f.kind == "evaluation" and f.has("label_errors.png"):
        picture = _png_file(f.file("label_errors.png"), "errors by true label")
    else:
        picture = _drawn(
            plot_confusion,
            np.asarray(e["errors_by_truth"]),
            e["classes"],
            alt="errors by true label",
            xlabel="label predicted wrongly (diagonal: the true label missed)",
            ylabel="true label",
        )
    rows = "".join(
        f"<tr><td>{escape(c)}</td><td class='num'>{e['missed'][i]}</td><td class='num'>{e['false_positives'][i]}"
        "</td></tr>"
        for i, c in enumerate(e["classes"])
    )
    pairs = "".join(
        f"<tr><td>{escape(p['truth'])}</td><td>{escape(p['predicted'])}</td><td class='num'>{p['images']}</td></tr>"
        for p in error_pairs(e)
    )
    return (
        "<p>row: the images whose labels include it; diagonal: how many of them miss it; elsewhere: how many of "
        "them have that column's label predicted though it is not theirs</p>"
        f'<div class="row"><div>{picture}</div><div><table><thead><tr><th>label</th><th class="num">missed</th>'
        f'<th class="num">predicted wrongly</th></tr></thead><tbody>{rows}</tbody></table>'
        + (
            "<h3>wrong labels beside a true one</h3><table><thead><tr><th>true</th><th>predicted wrongly</th>"
            f"<th class='num'>images</th></tr></thead><tbody>{pairs}</tbody></table>"
            if pairs
            else "<p>no label was predicted wrongly beside a true one</p>"
        )
        + "</div></div>"
    )


def section_no_gallery(f: Folder) -> str:
    raise Missing("a multi-label model: its errors are in the per-label table and the errors by true label")


# report.py's keys -> (title, section) for a multi-label folder
SECTIONS = {
    "confusion": ("Errors by true label", section_label_errors),
    "per-class": ("Per label", section_per_label),
    "reliability": ("Calibration per label", section_label_reliability),
    "mistakes": ("Most confident mistakes", section_no_gallery),
}
