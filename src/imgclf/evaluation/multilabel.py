"""Multi-label measures: per-label thresholds fitted for a goal (`fit_thresholds`), and the metrics of sigmoid
scores against multi-hot targets (`multilabel_metrics`): mAP (macro and micro), per-label AP, precision, recall
and F1 at the thresholds, exact-match ratio and Hamming loss. Numpy in, plain types out.

The goal a user names (`--threshold`, `parse_goal`): `f1` (each label's threshold maximises its F1 on the
validation split), `precision=P` (the lowest threshold whose precision reaches P: the most recall at that
precision), `recall=R` (the highest threshold whose recall reaches R), or a number (that threshold for every
label, nothing fitted).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import DEFAULT_THRESHOLD

GOALS = ("f1", "precision", "recall", "global")


@dataclass(frozen=True)
class Goal:
    """What per-label thresholds are fitted for: kind (f1, precision, recall, or global) and its target value."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        if self.kind == "f1":
            return "f1"
        return f"{self.value:g}" if self.kind == "global" else f"{self.kind}={self.value:g}"


def parse_goal(text: str | float | None) -> Goal:
    """`--threshold`'s value as a Goal: f1 (the default), precision=P, recall=R, or a number in [0, 1]. A value
    that is none of these is a UsageError that lists them."""
    s = "f1" if text is None else str(text).strip().lower()
    if s == "f1":
        return Goal("f1")
    kind, _, value = s.partition("=")
    try:
        v = float(value if value else kind)
    except ValueError:
        v = math.nan
    if kind in ("precision", "recall") and value and 0.0 < v <= 1.0:
        return Goal(kind, v)
    if not value and 0.0 <= v <= 1.0:
        return Goal("global", v)
    raise UsageError(
        f"--threshold '{text}' is not a goal: give f1 (each label's best F1 on validation), precision=P or "
        "recall=R (P, R in (0, 1]), or one threshold for every label from 0 to 1 (e.g. 0.5)"
    )


def fit_thresholds(scores: np.ndarray, targets: np.ndarray, goal: Goal) -> tuple[list[float], list[str]]:
    """One threshold per label for `goal`, from validation `scores` (N x C probabilities) and `targets` (N x C
    0/1): (thresholds, notes). A label validation holds no positive of keeps 0.5; a precision no threshold reaches
    gets the threshold of the best precision there is; each said in a note."""
    n_cls = scores.shape[1]
    if goal.kind == "global":
        return [float(goal.value)] * n_cls, []
    out, notes = [], []
    for k in range(n_cls):
        t, note = _fit_one(scores[:, k], targets[:, k].astype(bool), goal)
        out.append(t)
        if note:
            notes.append(f"label {k}: {note}")
    return out, notes


def _fit_one(s: np.ndarray, y: np.ndarray, goal: Goal) -> tuple[float, str | None]:
    from sklearn.metrics import precision_recall_curve  # noqa: PLC0415 - heavy (scipy); only when fitting

    if not y.any():
        return DEFAULT_THRESHOLD, "no positive image in validation, threshold left at 0.5"
    precision, recall, thr = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    note = None
    if goal.kind == "f1":
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        i = int(np.argmax(f1))
    elif goal.kind == "recall":
        i = int(np.flatnonzero(recall >= goal.value).max())  # recall falls as the threshold rises: the highest
    elif len(ok := np.flatnonzero(precision >= goal.value)):
        i = int(ok.min())  # the lowest threshold at that precision: the most recall
    else:
        i = int(np.argmax(precision))
        note = f"precision {goal.value:g} is out of reach; the best there is, {precision[i]:.3f}"
    return _between(s, float(thr[i])), note


def _between(s: np.ndarray, t: float) -> float:
    """A threshold that takes the same decisions on validation as `t` (a score there) but sits halfway to the next
    lower score: not on a score itself, where a test image a hair below a saturated validation score (1.0 in fp32)
    would fall out of the set."""
    below = s[s < t]
    return float((t + below.max()) / 2) if len(below) else t


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, thresholds, classes: list[str]) -> dict:
    """The measures of probabilities `scores` (N x C) against `targets` (N x C 0/1) at `thresholds` (one per
    label), as plain types. AP of a label with no positive image is None (undefined) and left out of the macro mAP."""
    from sklearn.exceptions import UndefinedMetricWarning  # noqa: PLC0415 - heavy (scipy); not needed to import imgclf
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support  # noqa: PLC0415

    y = np.asarray(targets).astype(np.int64)
    pred = (np.asarray(scores) >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.int64)
    has_pos = y.sum(axis=0) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ap = [float(average_precision_score(y[:, k], scores[:, k])) if has_pos[k] else None for k in range(y.shape[1])]
        micro_ap = float(average_precision_score(y.ravel(), np.asarray(scores).ravel())) if y.any() else None
        p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
        mp, mr, mf, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    defined = [a for a in ap if a is not None]
    return {
        "task": "multilabel",
        "mAP": float(np.mean(defined)) if defined else None,
        "micro_mAP": micro_ap,
        "micro_f1": float(mf),
        "micro_precision": float(mp),
        "micro_recall": float(mr),
        "macro_f1": float(np.mean(f)) if len(f) else float("nan"),
        "exact_match": float((pred == y).all(axis=1).mean()) if len(y) else float("nan"),
        "hamming_loss": float((pred != y).mean()) if len(y) else float("nan"),
        "num_images": int(len(y)),
        "classes": list(classes),
        "thresholds": [float(t) for t in thresholds],
        "per_label": {
            c: {
                "ap": ap[i],
                "threshold": float(thresholds[i]),
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
    }
