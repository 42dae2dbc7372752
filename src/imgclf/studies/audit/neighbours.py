"""Near-duplicates in two tiers, and outliers, for `check --deep`.

- Tier 1, perceptual hashes (`data/phash.py`, computed in check's decode pass): images whose 64-bit hashes differ
  in at most `hash_bits` bits (10; 6 where an image's shorter side is under 64 px, as CIFAR's 32 px images'
  hashes crowd closer) are re-encodings, resizes or brightness changes of each other, and often small crops.
  faiss's `IndexBinaryFlat` range search finds every such pair (popcounts in C; 50,000 hashes take seconds).
- Tier 2, embeddings: images whose L2-normalised features are within cosine distance `cosine` of each other,
  and within half the data's median nearest-neighbour distance (`RELATIVE`: data whose images are all alike)
  (semantic copies: the next frame of a burst, a heavier edit); and an image with its nearest neighbour where
  that one stands out, by Lowe's ratio test: closer than `distinct`'s cosine (and the median nearest-neighbour
  distance) and than half the next neighbour's distance (a crop moves a small image's features past the plain
  threshold, but leaves it far nearer its original than any other photo). The pairs come from each image's `k`
  nearest neighbours (faiss `IndexFlatIP`), the same search the outlier scores use, so the features are searched
  once; a cluster of more than `k` copies is still one cluster, as each copy links to `k` of the others.
- Clusters are the connected components (scipy) of the union of both tiers' pairs; pairs of exact pixel
  duplicates (equal digests: the plain check reports them) are left out. A cluster over several splits is an
  error (`near-duplicate-across-splits`: a leak), one inside a split a warning (`near-duplicate`); each gets
  a group id `nd-N` (fixes.csv keeps a group on one side of imgclf's own split) and its closest link as score.
- Outliers: each image's mean cosine distance to its `k` nearest images (itself excluded), flagged above
  median + `mads` x the scaled median absolute deviation (MAD x 1.4826) of all the images' scores: a rule
  relative to the data's own spread (tightly packed digits and varied photos get their own limits), which the
  extreme values it hunts cannot move as they would move a mean and a standard deviation. 3.5 is Iglewicz and
  Hoaglin's modified z-score rule (one-sided here); on 12,200 CIFAR-10 training images it flags about 0.1%.
  An image repeated many times (a placeholder) has its copies as neighbours and is no outlier: the exact and
  near-duplicate findings name it instead.

The default thresholds were chosen on training images only, with `benchmarks/near_duplicates.py` (altered copies
of training photos planted into a val of other training photos; docs/benchmarks.md has the numbers): 6 bits
for 32 px CIFAR-10 images (8 bits already clustered 1.2% of the untouched images), 10 for photos (hymenoptera),
and on Lite0's features cosine 0.12 with the ratio test at (0.2, 0.5) (chosen on one CIFAR-10 draw, checked on a
second: 98.0% and 96.0% of the planted copies found, 0.90% and 0.80% of the untouched images clustered; cosine
0.13 alone found 94.5% and 93.0%, missing most crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.core.errors import DataError
from imgclf.data.check import Finding
from imgclf.data.phash import BITS, hash_bytes

HASH_BITS = 10  # tier 1: at most this many of the 64 bits differ (photos)
HASH_BITS_SMALL = 6  # ... where either image's shorter side is below SMALL_SIDE (CIFAR's 32 px: hashes crowd)
SMALL_SIDE = 64
COSINE = 0.12  # tier 2: cosine distance below this (Lite0 features; chosen on CIFAR-10 training images)
# ... and below this share of the data's median nearest-neighbour distance: where every image is close to the
# others (product shots on white, scans, synthetic images), a fixed cosine would join distinct images. The data
# sets the benchmark measured are not affected (median 1-NN distance 0.31 on CIFAR-10, 0.27 on hymenoptera:
# half of either is above COSINE).
RELATIVE = 0.5
# ... or an image's nearest neighbour within this cosine distance (and the data's median nearest-neighbour
# distance) *and* within this share of its next neighbour's distance: see distinct_links
DISTINCT = (0.2, 0.5)
OUTLIER_K = 10  # neighbours an outlier score averages over
OUTLIER_MADS = 3.5  # flagged above median + this many scaled MADs: Iglewicz and Hoaglin's modified z-score rule
OUTLIER_MIN_IMAGES = 50  # below this, no spread to judge an outlier by
_MAD_SCALE = 1.4826  # a normal distribution's standard deviation in MADs


@dataclass
class Links:
    """Pairs of images (i < j), the tier that linked them (1: hash, 2: embedding) and their distance (hash: bits
    that differ; embedding: cosine distance)."""

    i: np.ndarray
    j: np.ndarray
    tier: np.ndarray
    dist: np.ndarray

    @staticmethod
    def of(i, j, tier: int, dist) -> Links:
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        keep = lo != hi
        return Links(lo[keep], hi[keep], np.full(int(keep.sum()), tier, np.int8), np.asarray(dist, float)[keep])

    @staticmethod
    def join(parts: list[Links]) -> Links:
        if not parts:
            return Links.of([], [], 1, [])
        return Links(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("i", "j", "tier", "dist")))

    def where(self, keep: np.ndarray) -> Links:
        return Links(self.i[keep], self.j[keep], self.tier[keep], self.dist[keep])

    def score(self) -> np.ndarray:
        """Distances on one scale: a hash link's share of differing bits, an embedding link's cosine distance."""
        return np.where(self.tier == 1, self.dist / BITS, self.dist)


def neighbour_findings(
    shown: list[str],
    splits: list[str],
    labels: list[str],
    feats: np.ndarray | None,
    hashes: Sequence[int | None] | None,
    *,
    digests: Sequence[bytes | None] | None = None,
    sides: Sequence[int] | None = None,
    hash_bits: int = HASH_BITS,
    hash_bits_small: int = HASH_BITS_SMALL,
    cosine: float = COSINE,
    distinct: tuple[float, float] | None = DISTINCT,
    k: int = OUTLIER_K,
    mads: float = OUTLIER_MADS,
) -> list[Finding]:
    """Near-duplicate clusters (both tiers) and outliers. One entry per image in `shown`, `splits`, `labels`,
    the rows of `feats` (None: no tier 2 and no outliers), `hashes` (None: no tier 1; an entry None: that image
    has none), `digests` (check's pixel digests: exact duplicates, not reported again) and `sides` (each image's
    shorter side: a pair with an image under SMALL_SIDE pixels is held to `hash_bits_small`)."""
    n = len(shown)
    for name, seq in (
        ("splits", splits),
        ("labels", labels),
        ("feats", feats),
        ("hashes", hashes),
        ("digests", digests),
        ("sides", sides),
    ):
        if seq is not None and len(seq) != n:
            raise DataError(f"neighbour_findings: {name} has {len(seq)} entries for {n} images")
    parts, findings = [], []
    if hashes is not None:
        parts.append(_by_size(hash_links(hashes, max(hash_bits, hash_bits_small)), sides, hash_bits, hash_bits_small))
    if feats is not None and n > 1:
        x = l2_normalised(feats)
        dist, idx = nearest(x, min(k, n - 1))
        typical = float(np.median(dist[:, 0]))  # the data's median nearest-neighbour distance
        parts.append(embedding_links(dist, idx, min(cosine, RELATIVE * typical)))
        if distinct is not None and dist.shape[1] > 1:
            parts.append(distinct_links(dist, idx, min(distinct[0], typical), distinct[1]))
        findings += outlier_findings(shown, labels, x, dist, mads=mads)
    links = without_exact(Links.join(parts), digests)
    return cluster_findings(shown, splits, labels, links) + findings


def hash_links(hashes: Sequence[int | None], max_bits: int) -> Links:
    """Every pair of hashes at most `max_bits` apart, by faiss's binary range search."""
    import faiss  # noqa: PLC0415 - heavy and native: only for check --deep

    have = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(have) < 2:
        return Links.of([], [], 1, [])
    codes = hash_bytes([hashes[i] for i in have])
    index = faiss.IndexBinaryFlat(BITS)
    index.add(codes)
    lims, dist, found = index.range_search(codes, max_bits + 1)  # strictly below the radius
    rows = np.repeat(np.arange(len(have)), np.diff(lims.astype(np.int64)))
    keep = rows < found  # each pair once, and not an image with itself
    return Links.of(have[rows[keep]], have[found[keep]], 1, dist[keep])


def _by_size(links: Links, sides: Sequence[int] | None, bits: int, bits_small: int) -> Links:
    """The hash links within their pair's threshold: `bits_small` where either image is small, else `bits`."""
    if sides is None:
        return links.where(links.dist <= bits)
    side = np.asarray(sides, dtype=np.int64)
    small = np.minimum(side[links.i], side[links.j]) < SMALL_SIDE
    return links.where(links.dist <= np.where(small, bits_small, bits))


def l2_normalised(feats: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(feats, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` nearest other rows by cosine: (N x k cosine distances, N x k indices), closest first.
    `x` is L2-normalised; faiss's exact inner-product search."""
    import faiss  # noqa: PLC0415 - heavy and native: only for check --deep

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    own = idx == np.arange(len(x))[:, None]
    own[~own.any(axis=1), -1] = True  # an exact copy came first: drop the farthest instead of the image itself
    keep = ~own
    return (1.0 - sims[keep]).reshape(len(x), k).clip(0.0, 2.0), idx[keep].reshape(len(x), k)


def embedding_links(dist: np.ndarray, idx: np.ndarray, max_cosine: float) -> Links:
    """The pairs among each image's nearest neighbours closer than `max_cosine`, each pair once."""
    rows, cols = np.nonzero(dist < max_cosine)
    links = Links.of(rows, idx[rows, cols], 2, dist[rows, cols])
    if not len(links.i):
        return links
    _, first = np.unique(np.stack([links.i, links.j], axis=1), axis=0, return_index=True)
    return links.where(np.sort(first))


def distinct_links(dist: np.ndarray, idx: np.ndarray, max_cosine: float, ratio: float) -> Links:
    """Each image linked to its nearest neighbour where that one is closer than `max_cosine` *and* than `ratio`
    times the next one (Lowe's ratio test): an edited copy of one photo stands out from the photos merely like
    it, even where the edit (a crop) moved its features past the plain threshold."""
    rows = np.nonzero((dist[:, 0] < max_cosine) & (dist[:, 0] < ratio * dist[:, 1]))[0]
    return Links.of(rows, idx[rows, 0], 2, dist[rows, 0])


def without_exact(links: Links, digests: Sequence[bytes | None] | None) -> Links:
    """The links that are not between exact pixel duplicates (which the plain check already reports)."""
    if digests is None or not len(links.i):
        return links
    same = np.array([digests[a] is not None and digests[a] == digests[b] for a, b in zip(links.i, links.j)])
    return links.where(~same)


def clusters(n: int, links: Links) -> list[np.ndarray]:
    """The connected components of the links with two or more images, each sorted, in order of their first."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415 - heavy: only for check --deep
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415 - heavy: only for check --deep

    if not len(links.i):
        return []
    graph = coo_matrix((np.ones(len(links.i)), (links.i, links.j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    order = np.argsort(comp, kind="stable")
    groups = np.split(order, np.cumsum(sizes)[:-1])
    return sorted((g for g in groups if len(g) > 1), key=lambda g: int(g[0]))


def cluster_findings(shown: list[str], splits: list[str], labels: list[str], links: Links) -> list[Finding]:
    """One finding per cluster: an error when it spans splits (a leak), else a warning; cross-split first, then
    closest first; group ids nd-1, nd-2, ... in that order."""
    comps = clusters(len(shown), links)
    if not comps:
        return []
    comp_of = np.full(len(shown), -1)
    for c, members in enumerate(comps):
        comp_of[members] = c
    # each cluster's links: the links sorted by their cluster once, then cut (not a pass over all links per cluster)
    link_comp = comp_of[links.i]
    order = np.argsort(link_comp, kind="stable")
    cuts = np.searchsorted(link_comp[order], np.arange(len(comps) + 1))
    rows = []
    for c, members in enumerate(comps):
        mine = links.where(order[cuts[c] : cuts[c + 1]])
        in_splits = list(dict.fromkeys(splits[m] for m in members))
        rows.append((len(in_splits) == 1, float(mine.score().min()), members, in_splits, mine))
    rows.sort(key=lambda r: (r[0], r[1], int(r[2][0])))
    out = []
    for g, (within, best, members, in_splits, mine) in enumerate(rows, 1):
        kind = "near-duplicate" if within else "near-duplicate-across-splits"
        out.append(
            Finding(
                kind,
                [shown[m] for m in members],
                _cluster_detail(members, in_splits, labels, mine),
                score=round(best, 4),
                group=f"nd-{g}",
            )
        )
    return out


def _cluster_detail(members: np.ndarray, in_splits: list[str], labels: list[str], mine: Links) -> str:
    how = []
    for tier, what, unit in (
        (1, "perceptual hash", "{:.0f} of 64 bits differ"),
        (2, "embedding", "cosine distance {:.3f}"),
    ):
        d = mine.dist[mine.tier == tier]
        if len(d):
            how.append(f"{what} (closest: {unit.format(d.min())})")
    where = f"in {in_splits[0]}" if len(in_splits) == 1 else f"across {' and '.join(in_splits)}"
    text = f"{len(members)} near-identical images {where}, linked by {' and '.join(how)}"
    given = sorted({labels[m] for m in members})
    if len(given) > 1:
        text += f"; labelled {' and '.join(given)}"
    if len(in_splits) > 1:
        text += f": scores on {' and '.join(in_splits[1:])} will be optimistic"
    return text


def outlier_scores(dist: np.ndarray) -> np.ndarray:
    """Each image's mean cosine distance to its nearest neighbours (the rows of `nearest`'s distances)."""
    return dist.mean(axis=1)


def outlier_limit(scores: np.ndarray, mads: float) -> float:
    """median + `mads` x the scaled median absolute deviation of the scores."""
    med = float(np.median(scores))
    return med + mads * _MAD_SCALE * float(np.median(np.abs(scores - med)))


def outlier_findings(
    shown: list[str], labels: list[str], x: np.ndarray, dist: np.ndarray, *, mads: float
) -> list[Finding]:
    """The images far beyond the data's own distribution of k-nearest-neighbour distances, farthest first; each
    names the class whose mean feature is nearest to it."""
    if len(shown) < OUTLIER_MIN_IMAGES:
        return []
    scores = outlier_scores(dist)
    limit, med = outlier_limit(scores, mads), float(np.median(scores))
    flagged = np.nonzero(scores > limit)[0]
    if not len(flagged):
        return []
    classes, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    centroids = l2_normalised(np.stack([x[y == c].mean(axis=0) for c in range(len(classes))]))
    near = (x[flagged] @ centroids.T).argmax(axis=1)
    out = []
    for i, c in sorted(zip(flagged, near), key=lambda t: -scores[t[0]]):
        detail = (
            f"far from every image: mean cosine distance {scores[i]:.3f} to its {dist.shape[1]} nearest images "
            f"(median {med:.3f}, flagged above {limit:.3f}); labelled {labels[i]}, nearest class {classes[c]}"
        )
        out.append(Finding("outlier", [shown[i]], detail, label=labels[i], score=round(float(scores[i]), 4)))
    return out
