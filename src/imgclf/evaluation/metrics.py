"""The measures of a classifier's logits against labels: accuracy, loss, macro-F1, top-5 (over 5 classes), the
per-class table and the confusion matrix (`compute_metrics`), and their text report (`format_report`)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

TOP_K = 5  # the top-k accuracy reported, when there are more than TOP_K classes


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Metrics as plain types. Accuracies are fractions in [0, 1]. top5 is None unless there are more than 5
    classes: with 5 or fewer the true class is always among the top 5, a score of 1.0 that says nothing."""
    from sklearn.exceptions import UndefinedMetricWarning  # noqa: PLC0415 - heavy (scipy); not needed to import imgclf
    from sklearn.metrics import (  # noqa: PLC0415 - as above
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    n_cls = len(classes)
    y = labels.numpy()
    pred = logits.argmax(1).numpy()
    idx = list(range(n_cls))
    with warnings.catch_warnings():
        # What sklearn warns about is handled here, so its warnings would only reach the user's console:
        # a class never predicted or absent scores 0 (zero_division=0), and a split of one class still gets
        # an n x n matrix (labels=idx).
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        loss = float(F.cross_entropy(logits, labels).item()) if len(y) else float("nan")
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
        top5 = None
        if n_cls > TOP_K and len(y):
            top5 = float(top_k_accuracy_score(y, logits.numpy(), k=TOP_K, labels=idx))
        macro_f1 = float(f1_score(y, pred, labels=idx, average="macro", zero_division=0))
        cm = confusion_matrix(y, pred, labels=idx).tolist()
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "loss": loss,
        "macro_f1": macro_f1,
        "top5_accuracy": top5,
        "num_images": int(len(y)),
        "classes": list(classes),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm,
    }


def format_report(m: dict) -> str:
    lines = [
        f"accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['macro_f1']:.4f}"
        + (f"  top-5 {m['top5_accuracy']:.4f}" if m.get("top5_accuracy") is not None else "")
        + f"  ({m['num_images']} images)"
    ]
    lines += _trust_lines(m)
    w = max([5] + [len(c) for c in m["classes"]])
    lines.append(f"{'class':<{w}}  precision  recall      f1  support")
    for c, r in m["per_class"].items():
        lines.append(f"{c:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    return "\n".join(lines)


def _trust_lines(m: dict) -> list[str]:
    """ECE and the coverage table, where the metrics have them (evaluate's do; training's do not)."""
    if "calibration" not in m:
        return []
    c = m["calibration"]
    how = [f"temperature {c['temperature']:.4g}" if c["temperature"] != 1.0 else "not calibrated"]
    if m.get("tta"):
        how.append(f"--tta {m['tta']}")
    lines = [f"ECE ({c['ece_bins']} bins) {c['ece']:.4f}  ({', '.join(how)})"]
    cells = [
        f">= {s['threshold']:g}: {s['coverage']:.1%} of images"
        + (f", accuracy {s['accuracy']:.4f}" if s["accuracy"] is not None else "")
        for s in c["selective"]
    ]
    lines.append("confidence " + "; ".join(cells))
    return lines
