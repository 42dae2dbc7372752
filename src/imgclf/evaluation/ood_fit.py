"""Fitting a model's out-of-distribution scores (core/ood.py) and storing them in its checkpoint: what training
does at its end with best.pt and `imgclf calibrate` does again with the temperature it fits.

- The bank: the L2-normalised penultimate features (`Runner.features`) of a seeded random subsample of the training
  split, at most `--ood-bank` images (core/ood.DEFAULT_BANK, 10,000 by default), through the evaluation
  preprocessing (no augmentation), computed `CHUNK` images at a time and stored as float16 (N x D). k, the
  neighbour whose distance is the kNN score, is core/ood.neighbours_for(N). `--ood-bank 0`: no bank and no kNN
  score; msp and energy are fitted all the same.
- The thresholds: each score of every validation image (msp and energy from the logits after the runner's
  temperature, kNN against the bank), and core/ood.fit_record's threshold that lets `--ood-accept` of them
  (0.95 by default) through. The record keeps the temperature the logits had: a new temperature means a new fit.
- Images that cannot be read are left out of the bank and of the fit, and counted in the record.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from imgclf.core import ood
from imgclf.core.errors import DataError, UsageError
from imgclf.core.escape import one_line
from imgclf.core.options import out_of_range
from imgclf.core.shared_options import OOD_ACCEPT, OOD_BANK
from imgclf.data.feed import make_feed
from imgclf.data.sources import Split
from imgclf.infer.runtime import CheckpointRunner
from imgclf.models.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

CHUNK = 1024  # training images whose features are computed at once: bounded memory whatever the bank's size


def check_fit_options(bank_size, accept) -> None:
    """--ood-bank and --ood-accept against their declared ranges: one UsageError line, before any work."""
    if isinstance(bank_size, bool) or not isinstance(bank_size, int):
        raise UsageError(
            f"--ood-bank must be a whole number of training images (0: no kNN bank), not {bank_size!r:.20}"
        )
    if isinstance(accept, bool) or not isinstance(accept, (int, float)):
        raise UsageError(f"--ood-accept must be a fraction such as 0.95, not {accept!r:.20}")
    for flag, spec, value in (("--ood-bank", OOD_BANK, bank_size), ("--ood-accept", OOD_ACCEPT, accept)):
        problem = out_of_range(value, spec.range)
        if problem:
            raise UsageError(f"{flag} {problem}")


def asked(ckpt: dict, bank_size: int | None, accept: float | None) -> tuple[int, float]:
    """(--ood-bank, --ood-accept) of a refit: those given, else what the checkpoint's record was fitted for, else its
    training run's options, else the defaults (core/ood.py)."""
    record, config = (ckpt.get("ood") or {}).get("record") or {}, ckpt.get("config") or {}
    if bank_size is None:
        bank_size = record.get("bank_asked", config.get("ood_bank", ood.DEFAULT_BANK))
    if accept is None:
        accept = record.get("accept", config.get("ood_accept", ood.DEFAULT_ACCEPT))
    return bank_size, accept


def bank_indices(n: int, bank_size: int, seed: int) -> np.ndarray:
    """The training images (indices into a split of `n`) whose features make the bank: all of them when there are
    at most `bank_size`, else a seeded random subsample of `bank_size`, in order."""
    if n <= bank_size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=bank_size, replace=False))


@torch.no_grad()
def bank_features(runner, feed, indices, *, chunk: int = CHUNK) -> torch.Tensor | None:
    """N x D float16 normalised features of the images `indices` of `feed` (a data/feed.py feed: its evaluation
    batches), `chunk` images at a time; None for no image."""
    parts = []
    for start in range(0, len(indices), chunk):
        for x, _ in feed.batches(indices=indices[start : start + chunk]):
            parts.append(runner.features(x).to(torch.float16))
    return torch.cat(parts) if parts else None


@torch.no_grad()
def split_scores(runner, batches, bank: torch.Tensor | None, k: int | None) -> dict[str, np.ndarray]:
    """Every score (core/ood.py) of every image of `batches`: msp and energy from the runner's logits (its
    temperature in), knn as the distance to the k-th nearest row of `bank` (None: no knn)."""
    got: dict[str, list] = {}
    bank_np = bank.float().numpy() if bank is not None else None
    for x, _ in batches:
        out = runner.outputs(x)
        scores = ood.scores({"logits": out["logits"].numpy()}, runner.task)
        if bank_np is not None:
            scores["knn"] = ood.knn_distance(out["features"].numpy(), bank_np, k)
        for name, v in scores.items():
            got.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in got.items()}


def fit_ood(
    runner,
    train_feed,
    val_feed,
    *,
    bank_size: int = ood.DEFAULT_BANK,
    accept: float = ood.DEFAULT_ACCEPT,
    seed: int = 0,
    split: str = "val",
    left_out: int = 0,
    by: str = "train",
) -> dict:
    """{"record", "bank"}, the checkpoint's "ood" entry (models/checkpoint.py), of `runner` (a CheckpointRunner
    without a bank of its own): the bank of up to `bank_size` images of `train_feed` (a random subsample drawn with
    `seed`; None for `bank_size` 0) and the thresholds for `accept` on `val_feed`, the `split` named in the record.
    `left_out`: images of the two splits that could not be read (counted in the record); `by`: what fitted it."""
    t0 = time.perf_counter()
    n_train = len(train_feed) if train_feed is not None else 0
    idx = bank_indices(n_train, bank_size, seed)
    bank = bank_features(runner, train_feed, idx) if len(idx) else None
    rows = 0 if bank is None else len(bank)
    k = ood.neighbours_for(rows) if rows else None
    scores = split_scores(runner, val_feed.batches(), bank, k)
    if not scores or not len(scores["msp"]):
        raise DataError(f"the {split} split has no images to fit the out-of-distribution thresholds on")
    record = ood.fit_record(
        scores,
        accept=accept,
        temperature=runner.temperature,
        bank_size=rows,
        k=k,
        bank_asked=int(bank_size),
        train_images=n_train,
        seed=int(seed),
        split=split,
        left_out=int(left_out),
        by=by,
        seconds=round(time.perf_counter() - t0, 2),
    )
    return {"record": record, "bank": bank}


def fitting_runner(weights: str, ckpt: dict, *, device: str = "auto", channels_last: bool = True) -> CheckpointRunner:
    """The runner a fit measures with: checkpoint `ckpt` (read from `weights`) in fp32, with its temperature and
    without its old bank (the fit makes a new one)."""
    bare = {k: v for k, v in ckpt.items() if k != "ood"}
    return CheckpointRunner(weights, device=device, precision="fp32", channels_last=channels_last, ckpt=bare)


def fit_for_data(runner, src, val_feed, *, bank_size: int, accept: float, split: str, workers: int, cache: str, **kw):
    """fit_ood with the training split of `src` (data/sources.py, opened as the model's training opened it): only the
    bank's images are decoded (those that cannot be read are left out and counted)."""
    train: Split | None = src.splits.get("train")
    n = len(train) if train is not None else 0
    seed = runner.config.get("seed", 0)
    idx = bank_indices(n, bank_size, seed)
    train_feed, bad = None, []
    if len(idx):
        train_feed, bad = make_feed(
            train.subset(idx.tolist(), name="train"),
            runner.preprocess,
            cache=cache,
            workers=max(1, workers),
            eval_batch_size=val_feed.eval_batch_size,
            desc="decode the kNN bank",
        )
        for path, reason in bad:
            log.warning("left out of the kNN bank %s: %s", one_line(path), one_line(reason))
    elif bank_size:
        log.warning("%s has no training split: the kNN score is not fitted (msp and energy are)", src.location)
    entry = fit_ood(runner, train_feed, val_feed, bank_size=len(idx), accept=accept, seed=seed, split=split, **kw)
    entry["record"]["train_images"], entry["record"]["bank_asked"] = n, int(bank_size)
    entry["record"]["left_out"] += len(bad)
    return entry


def store(ckpt: dict, entry: dict, weights: str) -> None:
    """Write checkpoint `ckpt` to `weights` (atomically) with `entry` as its "ood"."""
    ckpt["ood"] = entry
    save_checkpoint(ckpt, weights)


def summary(record: dict) -> str:
    """One line: each threshold, the acceptance, the bank and k."""
    thr = ", ".join(f"{name} {t:.4g}" for name, t in record["thresholds"].items())
    bank = (
        f"kNN bank of {record['bank_size']} of {record.get('train_images', record['bank_size'])} training images, "
        f"k {record['k']}"
        if record.get("k")
        else "no kNN bank"
    )
    return (
        f"out-of-distribution thresholds for {record['accept']:.0%} of {record.get('split', 'val')} accepted "
        f"({record['val_images']} images): {thr}; {bank}"
    )
