"""Active-learning strategies: each ranks the pool by the model's predicted probabilities p, most useful to label
first:
- entropy: highest entropy -sum p log p first (uncertainty sampling with Shannon's entropy; Settles 2009,
  "Active Learning Literature Survey", section 3.1).
- margin: smallest gap between the two most probable classes first (Scheffer, Decomain and Wrobel 2001).
- least-confidence: lowest top probability first (Lewis and Gale 1994; Culotta and McCallum 2005).
- random: a seeded uniform draw, the baseline every study compares with.
- diverse: uncertainty spread over the feature space, after Zhdanov 2019, "Diverse mini-batch Active
  Learning": the DIVERSE_PREFILTER x N most uncertain images (by margin) are clustered into N groups by k-means on
  the model's penultimate features, weighted by their uncertainty, and the image nearest each centre is picked,
  so that a batch is not N near-copies of one confusing scene.

A multi-label model (one sigmoid p_k per label) gives each a meaning over its labels, each label a yes/no question
with probabilities (p_k, 1 - p_k): entropy is the mean binary entropy over the labels; margin is the smallest
binary margin |p_k - (1 - p_k)| = |2 p_k - 1| (the label nearest 0.5), smallest first; least-confidence is the
mean over labels of 1 - max(p_k, 1 - p_k); diverse prefilters by that margin.

The features are the input of the model's head (the classifier layer its registry entry names), the same
pre-head features the frozen-feature cache trains on; only a checkpoint exposes them (an exported graph gives
logits alone), so `diverse` needs a checkpoint.
"""

from __future__ import annotations

import warnings

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL, SINGLE

STRATEGIES = ("entropy", "margin", "least-confidence", "random", "diverse")
# Candidates per pick for `diverse` (Zhdanov's beta): enough to choose among, few enough that every pick stays
# among the uncertain images.
DIVERSE_PREFILTER = 10
# What the score column of selected.csv holds for each strategy, and in which order the rows come.
SCORE_MEANING = {
    "entropy": "entropy of the predicted probabilities (nats), highest first",
    "margin": "margin p1 - p2 between the two most probable classes, smallest first",
    "least-confidence": "1 - p1 (one less the top probability), highest first",
    "random": "entropy (nats), for comparison only: the order is a seeded random draw",
    "diverse": "margin p1 - p2 of each pick (one per k-means cluster of the uncertain images), smallest first",
}
SCORE_MEANING_MULTILABEL = {
    "entropy": "mean binary entropy over the labels (nats), highest first",
    "margin": "smallest |2p - 1| over the labels (the label nearest 0.5), smallest first",
    "least-confidence": "mean over the labels of 1 - max(p, 1 - p), highest first",
    "random": "mean binary entropy (nats), for comparison only: the order is a seeded random draw",
    "diverse": "smallest |2p - 1| over the labels of each pick (one per k-means cluster), smallest first",
}


def meaning(strategy: str, task: str = SINGLE) -> str:
    """What the score column holds for `strategy` on a model of `task`."""
    return (SCORE_MEANING_MULTILABEL if task == MULTILABEL else SCORE_MEANING)[strategy]


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Mean over the labels of each row of the binary entropy in nats of p and 1 - p (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return entropy(np.stack([p, 1.0 - p], axis=-1).reshape(-1, 2)).reshape(p.shape).mean(1)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(1)


def margin(probs: np.ndarray) -> np.ndarray:
    """p1 - p2: the top probability less the second (1 class: p1)."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return p[:, -1] - (p[:, -2] if p.shape[1] > 1 else 0.0)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, dtype=np.float64).max(1)


def label_margin(probs: np.ndarray) -> np.ndarray:
    """A multi-label row's smallest binary margin |2p - 1| over its labels."""
    return np.abs(2.0 * np.asarray(probs, dtype=np.float64) - 1.0).min(1)


def scores(probs: np.ndarray, strategy: str, task: str = SINGLE) -> np.ndarray:
    """The strategy's own measure of each image (see SCORE_MEANING, SCORE_MEANING_MULTILABEL)."""
    if task == MULTILABEL and strategy in STRATEGIES:
        p = np.asarray(probs, dtype=np.float64)
        if strategy in ("entropy", "random"):
            return binary_entropy(p)
        if strategy in ("margin", "diverse"):
            return label_margin(p)
        return (1.0 - np.maximum(p, 1.0 - p)).mean(1)
    if strategy in ("entropy", "random"):
        return entropy(probs)
    if strategy in ("margin", "diverse"):
        return margin(probs)
    if strategy == "least-confidence":
        return least_confidence(probs)
    raise UsageError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")


def rank(
    probs: np.ndarray,
    strategy: str,
    budget: int,
    *,
    features: np.ndarray | None = None,
    seed: int = 0,
    task: str = SINGLE,
) -> np.ndarray:
    """Indices of the `budget` images to label next (all of them when there are fewer), in the order asked;
    `task` multilabel: `probs` are sigmoids, ranked by the strategies' multi-label meaning (module docstring)."""
    probs = np.asarray(probs)
    k = min(int(budget), len(probs))
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(probs))[:k]
    if strategy == "diverse":
        if features is None:
            raise UsageError("--strategy diverse needs the model's features: pass a checkpoint")
        return diverse(np.asarray(features), probs, k, seed=seed, task=task)
    s = scores(probs, strategy, task)
    return np.argsort(s if strategy == "margin" else -s, kind="stable")[:k]


def diverse(
    features: np.ndarray,
    probs: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    prefilter: int = DIVERSE_PREFILTER,
    task: str = SINGLE,
) -> np.ndarray:
    """Zhdanov 2019: k picks, one per cluster of the prefilter*k most uncertain images, smallest margin first."""
    m = label_margin(probs) if task == MULTILABEL else margin(probs)
    by_margin = np.argsort(m, kind="stable")
    if k >= len(m):
        return by_margin
    cand = by_margin[: min(len(m), prefilter * k)]
    x = features[cand].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12  # cosine geometry: CNN features differ mostly in scale
    from sklearn.cluster import KMeans  # noqa: PLC0415 - heavy (scipy); only the diverse strategy clusters

    with warnings.catch_warnings():
        # near-duplicates: fewer distinct points than clusters. Handled below (the picks are filled up).
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x, sample_weight=1.0 - m[cand] + 1e-6)
    dist = km.transform(x)  # len(cand) x k distances to the centres
    picked: list[int] = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            picked.append(int(members[np.argmin(dist[members, c])]))
    taken = set(picked)
    picked += [i for i in range(len(cand)) if i not in taken][: k - len(picked)]  # empty clusters: most uncertain
    chosen = cand[np.asarray(picked, dtype=int)]
    return chosen[np.argsort(m[chosen], kind="stable")]
