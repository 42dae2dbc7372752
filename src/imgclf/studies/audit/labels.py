"""Label issues by confident learning: out-of-sample predicted probabilities from a stratified, seeded K-fold
cross-validation of a logistic regression on frozen features (every labelled image of every split), then
cleanlab's `find_label_issues` for which labels look wrong and `get_label_quality_scores` for their order.
imgclf's part is the probabilities and the review; the confident learning is cleanlab's."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.data.check import Finding

log = logging.getLogger(__name__)

# The classifier on the features: L2-normalised features (cosine geometry; standardising them gave noise dimensions
# the weight of the signal's), multinomial logistic regression at C=10. Chosen once, before any label-noise run,
# on Lite0 features of CIFAR-10 *training* images (1,500 fitted, 500 held out, clean labels; docs/check_deep.md):
# held-out accuracy 0.738 and log-loss 0.756, against 0.718 / 0.874 standardised at C=0.1 and 0.738 / 0.964 at
# C=1; and on 24 synthetic images with 2 wrong labels, where it got every other one right (standardised: 3 more
# wrong). Never tuned on a test set.
C = 10.0
MAX_ITER = 1000


def check_folds(counts: dict[str, int], folds: int) -> None:
    """One line, before any work, when a class has fewer labelled images than folds (or there is one class)."""
    if len([c for c, n in counts.items() if n]) < 2:
        raise UsageError("label issues need at least two classes with images: add images of another class")
    small = {c: n for c, n in counts.items() if 0 < n < folds}
    if small:
        c, n = min(small.items(), key=lambda kv: kv[1])
        fix = f"pass --folds {n}" if n >= 2 else "add images to it (at least 2 per class)"
        raise UsageError(
            f"class '{c}' has {n} image{'s' * (n != 1)}, fewer than --folds {folds}: {fix}"
            + (f" ({len(small)} classes are that small)" if len(small) > 1 else "")
        )


def class_counts(labels: list[str]) -> dict[str, int]:
    return dict(Counter(labels))


def cross_val_probs(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample probabilities (N x C, columns in class-index order 0..C-1): each image's from the fold
    model that did not see it."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy (scipy); check --deep only
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: PLC0415 - as above
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415 - as above
    from sklearn.preprocessing import Normalizer  # noqa: PLC0415 - as above

    clf = make_pipeline(Normalizer(), LogisticRegression(C=C, max_iter=MAX_ITER))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    present = np.unique(y)
    probs = cross_val_predict(clf, x, np.searchsorted(present, y), cv=cv, method="predict_proba")
    full = np.zeros((len(y), int(y.max()) + 1), dtype=np.float64)
    full[:, present] = probs
    return full


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the images whose label looks wrong, ranked worst first; every image's label quality)."""
    from cleanlab.filter import find_label_issues  # noqa: PLC0415 - heavy; check --deep only
    from cleanlab.rank import get_label_quality_scores  # noqa: PLC0415 - as above

    present = np.flatnonzero(probs.sum(0) > 0)  # classes with images: cleanlab wants columns 0..K-1 all used
    y = np.searchsorted(present, labels)
    p = probs[:, present]
    p = p / p.sum(1, keepdims=True)
    scores = get_label_quality_scores(y, p)
    issues = find_label_issues(y, p, filter_by="prune_by_noise_rate", n_jobs=1)
    idx = np.flatnonzero(issues)
    return idx[np.argsort(scores[idx], kind="stable")], scores


def label_findings(
    x: np.ndarray, labels: list[str], shown: list[str], classes: list[str], *, folds: int, seed: int, source: str
) -> tuple[list[Finding], dict]:
    """Findings of kind `label` (given label, suggested = the most probable class, score = label quality, lower
    is worse), worst first; and a summary (how many, the classifier's cross-validated accuracy)."""
    check_folds(class_counts(labels), folds)
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[c] for c in labels], dtype=np.int64)
    probs = cross_val_probs(x, y, folds=folds, seed=seed)
    ranked, scores = label_issues(y, probs)
    guess = probs.argmax(1)
    out = []
    for i in ranked:
        given, sugg = classes[y[i]], classes[guess[i]]
        detail = (
            f"labelled {given}, looks like {sugg} (p={probs[i, guess[i]]:.2f}; label quality {scores[i]:.3g}, "
            f"{folds}-fold cross-validated {source})"
        )
        out.append(Finding("label", [shown[i]], detail, label=given, suggested=sugg, score=float(f"{scores[i]:.4g}")))
    summary = {
        "images": len(y),
        "issues": len(out),
        "folds": folds,
        "cv_accuracy": round(float((guess == y).mean()), 4),
        "classifier": f"logistic regression (C={C:g}) on {source}",
    }
    return out, summary
