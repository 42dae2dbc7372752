"""The active-learning loop simulated on labelled data (`active.simulate`): frozen features of a pool and an
eval split (computed once, cached), a logistic regression refit each round, the strategies' picks revealed, and
the accuracy curves summarised and compared with random labelling."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os

import numpy as np
import torch

from imgclf.core.errors import UsageError
from imgclf.core.escape import one_line
from imgclf.core.fileio import atomic_open
from imgclf.core.progress import progress
from imgclf.data.sources import hash_split
from imgclf.studies.audit.features import FeatureModel, split_features
from imgclf.studies.strategies import rank

log = logging.getLogger(__name__)


def check_sizes(pool: int, classes: int, *, start: int, budget: int, rounds: int, start_mode: str) -> None:
    need = start + rounds * budget
    if need > pool:
        raise UsageError(
            f"--start {start} + --rounds {rounds} x --budget {budget} = {need} labels, but the pool (train split) "
            f"has {pool} images: lower them or raise --pool-size"
        )
    if start_mode == "stratified" and start < classes:
        raise UsageError(
            f"--start {start} cannot hold one image of each of the {classes} classes: raise it, or use "
            "--start-mode random"
        )


def subset(split, n: int | None, seed: int, flag: str):
    """A seeded random subset of `n` images (the same for every seed of the simulation), in the split's order."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise UsageError(f"{flag} must be at least 1, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return split.subset(keep.tolist())


def cached_features(fm: FeatureModel, pool, ev, out: str, *, batch_size: int):
    """(pool features, pool labels, eval features, eval labels) as numpy arrays, from OUT/features.pt when it
    was made by the same model and preprocessing from the same files, else computed (and saved there)."""
    h = hashlib.sha1(f"{fm.identity}\0{json.dumps(fm.prep.to_dict(), sort_keys=True)}".encode())
    hash_split(h, pool)
    hash_split(h, ev)
    key, path = h.hexdigest(), os.path.join(out, "features.pt")
    if os.path.isfile(path):
        with contextlib.suppress(Exception):  # unreadable or another run's: computed afresh below
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("key") == key:
                log.info("features from %s (same model, preprocessing and files)", path)
                return d["x"].numpy(), d["y"].numpy(), d["xe"].numpy(), d["ye"].numpy()
    x, y = _split_features(fm, pool, batch_size, "features pool")
    xe, ye = _split_features(fm, ev, batch_size, "features eval")
    blob = {"key": key, "x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    blob.update(xe=torch.from_numpy(xe), ye=torch.from_numpy(ye))
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)
    return x, y, xe, ye


def _split_features(fm: FeatureModel, split, batch_size: int, desc: str):
    """Pre-head features (N x D float32) and labels of the split's readable images; unreadable ones are listed
    and left out."""
    x, kept, bad = split_features(fm, split, batch_size, desc)
    for p, why in bad:
        log.warning("left out %s: %s", one_line(p), one_line(why))
    return x, np.asarray(split.labels, dtype=np.int64)[kept]


def start_set(y: np.ndarray, k: int, seed: int, mode: str) -> np.ndarray:
    """The first `k` labelled images: a seeded draw, stratified (every class, in proportion) or plain."""
    if mode == "random":
        return np.sort(np.random.default_rng(seed).choice(len(y), size=k, replace=False))
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - heavy (scipy); the simulation only

    counts = np.bincount(y)
    if k < np.count_nonzero(counts) or (counts[counts > 0] < 2).any():
        log.warning(
            "a stratified start of %d images is impossible here (a class of one image, or more classes): a plain draw",
            k,
        )
        return start_set(y, k, seed, "random")
    if k >= len(y):
        return np.arange(len(y))
    idx, _ = train_test_split(np.arange(len(y)), train_size=k, random_state=seed, stratify=y)
    return np.sort(idx)


def fit_predict(x: np.ndarray, y: np.ndarray, others: list[np.ndarray], n_classes: int) -> list[np.ndarray]:
    """A logistic regression fit on (x, y); its probabilities (N x n_classes) for each array of `others`.
    A class with no labelled image yet gets probability 0."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy (scipy); the simulation only

    present = np.unique(y)
    if len(present) == 1:  # one class seen so far: nothing to fit, it is the only answer
        outs = []
        for o in others:
            p = np.zeros((len(o), n_classes))
            p[:, present[0]] = 1.0
            outs.append(p)
        return outs
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    outs = []
    for o in others:
        p = np.zeros((len(o), n_classes))
        p[:, clf.classes_] = clf.predict_proba(o)
        outs.append(p)
    return outs


def run_strategy(x, y, xe, ye, labelled: np.ndarray, strategy: str, *, budget: int, rounds: int, seed: int):
    """One simulated loop: [(round, labels, accuracy)], round 0 being the start set. `x` is standardised."""
    n_classes = int(max(y.max(), ye.max())) + 1
    mask = np.zeros(len(y), dtype=bool)
    mask[labelled] = True
    out = []
    for r in range(rounds + 1):
        rest = np.flatnonzero(~mask)
        p_eval, p_rest = fit_predict(x[mask], y[mask], [xe, x[rest]], n_classes)
        out.append((r, int(mask.sum()), float((p_eval.argmax(1) == ye).mean())))
        if r == rounds:
            break
        mask[rest[rank(p_rest, strategy, budget, features=x[rest], seed=seed * 1009 + r)]] = True
    return out


def run_all(x, y, xe, ye, strategies, setup) -> list[dict]:
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415 - heavy (scipy); the simulation only

    # standardised with the statistics of the whole pool: unlabelled images are there to be used, labels are not
    scaler = StandardScaler().fit(x)
    x, xe = scaler.transform(x), scaler.transform(xe)
    rows = []
    runs = [(s, strat) for s in range(setup["seeds"]) for strat in strategies]
    for s, strat in progress(runs, total=len(runs), desc="simulating", unit="run", log_every=1):
        seed = setup["seed"] + s
        # the same start set for every strategy of a seed: their curves differ by their picks alone
        first = start_set(y, setup["start"], seed, setup["start_mode"])
        for r, labels, acc in run_strategy(
            x, y, xe, ye, first, strat, budget=setup["budget"], rounds=setup["rounds"], seed=seed
        ):
            rows.append({"strategy": strat, "seed": seed, "round": r, "labels": labels, "accuracy": acc})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per strategy and round: the mean, standard deviation, min and max accuracy over the seeds."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["round"], r["labels"]), []).append(r["accuracy"])
    return [
        {
            "strategy": k[0],
            "round": k[1],
            "labels": k[2],
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "seeds": len(v),
        }
        for k, v in groups.items()
    ]


def versus_random(rows: list[dict], *, after: int = 2) -> list[dict]:
    """Each strategy against random at equal labels, paired by seed and round, from round `after` on (the
    published finding is about the later rounds): the mean difference in accuracy and the pairs it won."""
    acc = {(r["strategy"], r["seed"], r["round"]): r["accuracy"] for r in rows}
    out = []
    for strat in dict.fromkeys(r["strategy"] for r in rows):
        if strat == "random":
            continue
        diffs = [
            a - acc[("random", s, rd)]
            for (st, s, rd), a in acc.items()
            if st == strat and rd >= after and ("random", s, rd) in acc
        ]
        if diffs:
            out.append(
                {
                    "strategy": strat,
                    "from_round": after,
                    "mean_diff": float(np.mean(diffs)),
                    "wins": int(sum(d > 0 for d in diffs)),
                    "ties": int(sum(d == 0 for d in diffs)),
                    "pairs": len(diffs),
                }
            )
    return out


def write_rows(rows: list[dict], path: str, cols: list[str]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
