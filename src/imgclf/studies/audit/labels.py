"""Label issues by confident learning: out-of-sample predicted probabilities from a stratified, seeded K-fold
cross-validation of a logistic regression on frozen features (every labelled image of every split), then
cleanlab's `find_label_issues` for which labels look wrong and `get_label_quality_scores` for their order; and
each suspect's probability of being wrong under symmetric noise (`noise_posterior`), the cross-validation refit
without the labels likely wrong, which decides whether fixes.csv suggests the relabel or a review.
imgclf's part is the probabilities and the review; the confident learning is cleanlab's."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.data.check import Finding
from imgclf.studies.audit.features import l2_normalised

log = logging.getLogger(__name__)

# The classifier on the features: L2-normalised features (cosine geometry; standardising them gave noise dimensions
# the weight of the signal's), multinomial logistic regression at C=10. Chosen once, before any label-noise run,
# on Lite0 features of CIFAR-10 *training* images (1,500 fitted, 500 held out, clean labels; docs/check_deep.md):
# held-out accuracy 0.738 and log-loss 0.756, against 0.718 / 0.874 standardised at C=0.1 and 0.738 / 0.964 at
# C=1; and on 24 synthetic images with 2 wrong labels, where it got every other one right (standardised: 3 more
# wrong). Never tuned on a test set.
C = 10.0
MAX_ITER = 1000
# Which suspects are likely wrong (P(label wrong) >= LIKELY: more likely wrong than right, so fixes.csv suggests
# the relabel) and how often the classifier is refit without them. Chosen on a draw of CIFAR-10 that is not
# benchmarks/label_noise.py's (subset and flips of seed 7, uniform noise 5%; docs/check_deep.md): the first fit's
# likely-wrong set had precision 0.92 at recall 0.44 (noise estimated 3.6%); refit without it, 0.89 / 0.56, then
# 0.88 / 0.61 and 0.87 / 0.62 (4.9%), changing little after. On the same images with CIFAR's own labels the
# estimate is 0 and nothing is likely wrong.
LIKELY = 0.5
REFITS = 4
EM_ITER = 500


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


class CrossVal:
    """The K fold models of one seeded, stratified split, refit on demand without some training images (those
    likely mislabelled): each refit starts from the fold model's last weights, so it takes a few iterations."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, folds: int, seed: int):
        from sklearn.model_selection import StratifiedKFold  # noqa: PLC0415 - heavy (scipy); check --deep only

        self.present = np.unique(y)
        self.x = l2_normalised(np.asarray(x, dtype=np.float64))
        self.y = np.searchsorted(self.present, y)
        self.width = int(y.max()) + 1
        self.splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(self.x, self.y))
        self.models: list = [None] * folds

    def probs(self, exclude: np.ndarray | None = None) -> np.ndarray:
        """Each image's probabilities from the fold model fitted on the other folds less `exclude` (a mask)."""
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - as above

        full = np.zeros((len(self.y), self.width), dtype=np.float64)
        for k, (train, test) in enumerate(self.splits):
            if exclude is not None:
                train = train[~exclude[train]]
            m = self.models[k]
            if m is None or len(np.unique(self.y[train])) != len(m.classes_):  # a class left out: start afresh
                m = self.models[k] = LogisticRegression(C=C, max_iter=MAX_ITER, warm_start=True)
            m.fit(self.x[train], self.y[train])
            full[np.ix_(test, self.present[m.classes_])] = m.predict_proba(self.x[test])
        return full


def noise_posterior(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """(each image's probability that its given label is wrong, the estimated share of wrong labels) under
    symmetric noise: a label is wrong with probability `eps`, and then any of the other K-1 classes alike. The
    out-of-sample probability q of the given label stands for the class's; eps is the fixed point of
    eps = mean P(wrong | q, eps) (expectation-maximisation; 0 when nothing needs noise to explain it, as when
    the classifier is unsure of every image: then nothing is likely wrong and every suspect is for review)."""
    k = int((probs.sum(0) > 0).sum())  # classes with images
    q = probs[np.arange(len(y)), y] / np.maximum(probs.sum(1), 1e-12)
    eps, wrong = 0.1, np.zeros(len(y))
    for _ in range(EM_ITER):
        a = eps / (k - 1) * (1 - q)
        wrong = np.divide(a, a + (1 - eps) * q, out=np.zeros_like(a), where=a > 0)
        eps, last = float(wrong.mean()), eps
        if abs(eps - last) < 1e-7:
            break
    return wrong, eps


def cleaner_probs(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(out-of-sample probabilities, P(label wrong), estimated noise rate): the cross-validation refit up to
    REFITS times without the images likely mislabelled (P >= LIKELY) by the fit before, until that set stops
    changing. A classifier fitted on the wrong labels half learns them; refit without them, it is surer what
    those images are, and the noise rate it implies comes closer to the true one."""
    cv = CrossVal(x, y, folds=folds, seed=seed)
    probs = cv.probs()
    wrong, eps = noise_posterior(y, probs)
    for _ in range(REFITS):
        likely = wrong >= LIKELY
        if not likely.any():
            break
        log.info("labels: %d likely wrong (noise %.1f%%): refitting without them", likely.sum(), 100 * eps)
        probs = cv.probs(exclude=likely)
        wrong, eps = noise_posterior(y, probs)
        if np.array_equal(wrong >= LIKELY, likely):
            break
    return probs, wrong, eps


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
    probs, wrong, eps = cleaner_probs(x, y, folds=folds, seed=seed)
    ranked, scores = label_issues(y, probs)
    guess = probs.argmax(1)
    out = []
    for i in ranked:
        given, sugg = classes[y[i]], classes[guess[i]]
        detail = (
            f"labelled {given}, looks like {sugg} (p={probs[i, guess[i]]:.2f}; label quality {scores[i]:.3g}; "
            f"P(label wrong) {wrong[i]:.2f}; {folds}-fold cross-validated {source})"
        )
        score, p_wrong = float(f"{scores[i]:.4g}"), round(float(wrong[i]), 4)
        out.append(Finding("label", [shown[i]], detail, label=given, suggested=sugg, score=score, wrong=p_wrong))
    summary = {
        "images": len(y),
        "issues": len(out),
        "likely_wrong": sum(f.wrong >= LIKELY for f in out),
        "noise_rate": round(eps, 4),
        "folds": folds,
        "cv_accuracy": round(float((guess == y).mean()), 4),
        "classifier": f"logistic regression (C={C:g}) on {source}",
    }
    return out, summary
