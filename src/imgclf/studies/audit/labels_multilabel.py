"""Label issues of a multi-label manifest (`check --deep`): out-of-sample per-label probabilities from a seeded,
shuffled K-fold cross-validation of one-vs-rest logistic regressions on the frozen features (labels.py's
classifier, one per label), then cleanlab's multi-label confident learning:
`multilabel_classification.filter.find_label_issues` (where `filter.find_label_issues(..., multi_label=True)` now
points) for which images' label sets look wrong, `multilabel_classification.get_label_quality_scores` for their
order. A finding's suggestion is the set the classifier gives at 0.5 per label (possibly empty); how
well it does is its cross-validated mAP (scikit-learn's average precision, labels with positives only).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import join_labels, label_set, split_labels
from imgclf.data.check import Finding
from imgclf.data.multilabel import multi_hot
from imgclf.studies.audit.labels import MAX_ITER, C

log = logging.getLogger(__name__)

SUGGEST_AT = 0.5  # a label is in the suggested set when its cross-validated probability reaches this


def check_multilabel_folds(cells: list[str], classes: list[str], folds: int) -> None:
    """One line, before any work, when a label has fewer images with it, or without it, than folds (its
    one-vs-rest classifier could not be fitted out of sample)."""
    y = multi_hot([split_labels(c) for c in cells], classes)
    pos, neg = y.sum(0), len(y) - y.sum(0)
    short = [(min(int(p), int(n)), c, "with" if p < n else "without") for c, p, n in zip(classes, pos, neg)]
    n, c, side = min(short) if short else (0, "", "with")
    if n < folds:
        fix = f"pass --folds {n}" if n >= 2 else f"add images {side} it (at least 2)"
        raise UsageError(f"label '{c}' has {n} image{'s' * (n != 1)} {side} it, fewer than --folds {folds}: {fix}")


def cross_val_label_probs(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample probabilities (N x C): each image's from the fold models that did not see it."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy (scipy); check --deep only
    from sklearn.model_selection import KFold, cross_val_predict  # noqa: PLC0415 - as above
    from sklearn.multiclass import OneVsRestClassifier  # noqa: PLC0415 - as above
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415 - as above
    from sklearn.preprocessing import Normalizer  # noqa: PLC0415 - as above

    clf = make_pipeline(Normalizer(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=MAX_ITER)))
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a label present in every image of a fold: a constant there, said by sklearn
        warnings.simplefilter("ignore", UserWarning)
        return cross_val_predict(clf, x, y, cv=cv, method="predict_proba")


def multilabel_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the images whose label set looks wrong, worst first; every image's label quality)."""
    from cleanlab.multilabel_classification import get_label_quality_scores  # noqa: PLC0415 - heavy; --deep only
    from cleanlab.multilabel_classification.filter import find_label_issues  # noqa: PLC0415 - as above

    labels = [np.flatnonzero(row).tolist() for row in y]
    scores = get_label_quality_scores(labels, probs)
    issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    idx = np.flatnonzero(issues)
    return idx[np.argsort(scores[idx], kind="stable")], scores


def shown_set(cell: str) -> str:
    """A label set as a finding's text shows it: 'a|b', or (no label)."""
    return f"'{cell}'" if cell else "(no label)"


def multilabel_label_findings(
    x: np.ndarray, cells: list[str], shown: list[str], classes: list[str], *, folds: int, seed: int, source: str
) -> tuple[list[Finding], dict]:
    """Findings of kind `label` (the given set, the suggested set `a|b`, score = label quality, lower is worse),
    worst first; and a summary (how many, the classifier's cross-validated mAP)."""
    from sklearn.metrics import average_precision_score  # noqa: PLC0415 - heavy (scipy); check --deep only

    check_multilabel_folds(cells, classes, folds)
    y = multi_hot([split_labels(c) for c in cells], classes)
    probs = cross_val_label_probs(x, y, folds=folds, seed=seed)
    ranked, scores = multilabel_issues(y, probs)
    out = []
    for i in ranked:
        given, sugg = cells[i], join_labels(label_set(probs[i], [SUGGEST_AT] * len(classes), classes))
        detail = (
            f"labelled {shown_set(given)}, looks like {shown_set(sugg)} (label quality {scores[i]:.3g}; {folds}-fold cross-validated "
            f"one-vs-rest on {source}; probabilities "
            + ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, probs[i]))
            + ")"
        )
        out.append(Finding("label", [shown[i]], detail, label=given, suggested=sugg, score=float(f"{scores[i]:.4g}")))
    has = y.sum(0) > 0
    summary = {
        "task": "multilabel",
        "images": len(y),
        "issues": len(out),
        "folds": folds,
        "cv_mAP": round(float(average_precision_score(y[:, has], probs[:, has], average="macro")), 4),
        "classifier": f"one-vs-rest logistic regression (C={C:g}) on {source}",
    }
    return out, summary
