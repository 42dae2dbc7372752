"""What `imgclf evaluate` (and report.html) measure of a multi-label model, beyond `multilabel.multilabel_metrics`:
per-label calibration (ECE of each label's sigmoid score), the co-occurrence of its errors, the text report and
the figures.

- Per-label ECE (label_calibration.py): each label's sigmoid probabilities against its 0/1 truth; the summary is
  the mean over labels and the pooled ECE of every (image, label) pair (the reliability diagram draws the pooled
  bins).
- Errors by true label (`label_errors`): a C x C table of images. Row i counts the images whose true set holds
  label i: cell (i, i) how many of them miss i (false negatives), cell (i, j) how many have j predicted though j is
  not in their set (a false positive of j beside a true i). "what is predicted when i is the truth, wrongly". Also
  `missed_together` (i, j): images where both i and j are in the set and both are missed.
"""

from __future__ import annotations

import os

import numpy as np

from imgclf.core.multilabel import DEFAULT_THRESHOLD
from imgclf.evaluation.label_calibration import label_calibration
from imgclf.evaluation.multilabel import multilabel_metrics
from imgclf.evaluation.plots import plot_confusion, plot_reliability

PAIRS_SHOWN = 8  # the error pairs the text report lists


def label_errors(scores: np.ndarray, targets: np.ndarray, thresholds, classes: list[str]) -> dict:
    """The errors' co-occurrence at `thresholds` (module docstring), as lists of ints."""
    y = np.asarray(targets).astype(bool)
    pred = np.asarray(scores) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    fn, fp = (y & ~pred).astype(np.int64), (pred & ~y).astype(np.int64)
    by_truth = y.astype(np.int64).T @ fp  # (i, j): images holding i with j a false positive
    np.fill_diagonal(by_truth, fn.sum(axis=0))
    return {
        "classes": list(classes),
        "missed": fn.sum(axis=0).tolist(),
        "false_positives": fp.sum(axis=0).tolist(),
        "errors_by_truth": by_truth.tolist(),
        "missed_together": (fn.T @ fn).tolist(),
    }


def error_pairs(errors: dict, n: int = PAIRS_SHOWN) -> list[dict]:
    """The `n` largest off-diagonal cells of errors_by_truth: {truth, predicted, images}, largest first."""
    m, classes = np.asarray(errors["errors_by_truth"]), errors["classes"]
    cells = [(int(m[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and m[i, j]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"truth": classes[i], "predicted": classes[j], "images": k} for k, i, j in cells[:n]]


def multilabel_evaluation(scores: np.ndarray, targets: np.ndarray, thresholds, classes: list[str]) -> dict:
    """eval.json's measures of a multi-label model: multilabel_metrics at its thresholds, the headline ones at
    0.5 for comparison, per-label calibration and the errors' co-occurrence."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    thresholds = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * len(classes)
    m = multilabel_metrics(scores, targets, thresholds, classes)
    half = multilabel_metrics(scores, targets, [DEFAULT_THRESHOLD] * len(classes), classes)
    keys = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "exact_match", "hamming_loss")
    m["at_0.5"] = {k: half[k] for k in keys}
    m["calibration"] = label_calibration(scores, targets, classes)
    m["errors"] = label_errors(scores, targets, thresholds, classes)
    return m


def _num(v, fmt: str = ".4f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


def format_multilabel_report(m: dict) -> str:
    """The text `imgclf evaluate` prints for a multi-label model."""
    lines = [
        f"mAP {_num(m['mAP'])} (micro {_num(m['micro_mAP'])})  micro-F1 {_num(m['micro_f1'])}  "
        f"macro-F1 {_num(m['macro_f1'])}  exact match {_num(m['exact_match'])}  Hamming loss "
        f"{_num(m['hamming_loss'])}  ({m['num_images']} images, the model's thresholds)"
    ]
    if "at_0.5" in m:
        h = m["at_0.5"]
        lines.append(
            f"at 0.5 for every label: micro-F1 {_num(h['micro_f1'])}  macro-F1 {_num(h['macro_f1'])}  "
            f"exact match {_num(h['exact_match'])}  Hamming loss {_num(h['hamming_loss'])}"
        )
    c = m.get("calibration")
    if c:
        t = c.get("temperature", 1.0)
        how = "not calibrated" if t == 1.0 else ("a temperature per label" if isinstance(t, list) else f"T {t:.4g}")
        lines.append(
            f"ECE ({c['ece_bins']} bins) mean over labels {_num(c['ece_mean'])}, pooled {_num(c['ece'])}  ({how}"
            + (f", --tta {m['tta']})" if m.get("tta") else ")")
        )
    w = max([5] + [len(k) for k in m["classes"]])
    ece = (c or {}).get("ece_per_label", {})
    lines.append(f"{'label':<{w}}      AP  threshold  precision  recall      f1  support" + ("     ECE" if ece else ""))
    for k, r in m["per_label"].items():
        lines.append(
            f"{k:<{w}}  {_num(r['ap']):>6}  {r['threshold']:9.3f}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
            f"{r['f1']:6.4f}  {r['support']:7d}" + (f"  {_num(ece.get(k)):>6}" if ece else "")
        )
    pairs = error_pairs(m["errors"]) if "errors" in m else []
    if pairs:
        lines.append(
            "most frequent wrong labels beside a true one: "
            + "; ".join(f"{p['predicted']} with true {p['truth']} ({p['images']})" for p in pairs)
        )
    return "\n".join(lines)


def write_multilabel_plots(m: dict, out: str, title: str = "") -> None:
    """reliability.png (the pooled per-label bins) and label_errors.png (errors by true label) into `out`."""
    c = m["calibration"]
    plot_reliability(
        c["reliability"],
        c["ece"],
        os.path.join(out, "reliability.png"),
        title,
        xlabel="probability of a label (every image and label)",
        ylabel="fraction positive",
    )
    plot_confusion(
        np.asarray(m["errors"]["errors_by_truth"]),
        m["classes"],
        os.path.join(out, "label_errors.png"),
        f"{title}  errors by true label (diagonal: missed)".strip(),
        xlabel="label predicted wrongly (diagonal: the true label missed)",
        ylabel="true label",
    )
