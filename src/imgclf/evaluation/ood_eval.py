"""`imgclf evaluate --ood-data DIR`: how well a model's out-of-distribution scores (core/ood.py) tell the images of
the evaluated split ("known") from a folder of images it was never taught ("unknown"), per score:

- AUROC: scikit-learn's `roc_auc_score` with the unknown images as the positive class and the score as the
  decision value (each score is higher for an image less like the training data); 0.5 is chance, 1.0 perfect;
- FPR at 95% TPR: the fraction of unknown images *accepted* by the threshold that accepts 95% of the known
  images (`core/ood.threshold_for` on the known scores, the rule a model's thresholds are fitted with; an image is
  accepted when its score is at most the threshold); lower is better;
- at the threshold the model stores (`Runner.ood`, fitted by training or `imgclf calibrate`): the fraction of
  unknown images rejected and the fraction of known images wrongly rejected.

The unknown folder is read whole (any layout, labels ignored) with the model's preprocessing; unreadable files
are listed and left out. The known images' msp and energy come from the logits evaluate has already computed; a
model with a kNN bank (a checkpoint, or an ONNX export with a "knn" output) runs the split once more for its
features. Under torchrun each rank scores its block of whole batches and the scores are gathered, as the logits
are (infer/logits.py `infer_sharded`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from imgclf.compute.distributed import batch_block, current, gather
from imgclf.core import ood as oodscores
from imgclf.core.errors import UsageError
from imgclf.core.escape import one_line
from imgclf.core.progress import progress
from imgclf.data.feed import make_feed
from imgclf.data.pipeline import default_workers
from imgclf.data.sources import Split
from imgclf.evaluation.ood_data import FLAG, check_ood_folder
from imgclf.evaluation.plots import plot_ood_histogram
from imgclf.infer.predict import walk_images

log = logging.getLogger(__name__)

TPR = 0.95  # the fraction of known images the FPR threshold accepts
HIST_BINS = 40
DEFINITIONS = {
    "positive": "unknown (the --ood-data images); every score is higher for an image less like the training data",
    "auroc": "area under the ROC curve of the score separating unknown (positive) from known images",
    "fpr_at_95_tpr": "fraction of unknown images accepted (score <= t) at the threshold t that accepts 95% of the "
    "known images (core/ood.threshold_for, as a model's thresholds are fitted)",
    "rejected_unknown": "fraction of unknown images rejected (score > the stored threshold)",
    "rejected_known": "fraction of known images wrongly rejected (score > the stored threshold)",
}
NO_RECORD = "this model stores no out-of-distribution thresholds: fit them with `imgclf calibrate WEIGHTS`"


def ood_feed(folder: str, runner, *, batch_size: int = 256, workers: int | None = None, cache: str = "auto"):
    """(feed, [(path, reason)] left out) of every image file under `folder` (labels ignored), decoded with the
    model's preprocessing. A UsageError line when the folder holds no image file, or none that can be read."""
    folder = check_ood_folder(folder)
    paths = list(walk_images(folder))
    if not paths:  # check_ood_folder found one the walk leaves out (a name it skips)
        raise UsageError(f"{FLAG} '{folder}' holds no image files: pass a folder of images (any layout)")
    split = Split(name="ood", labels=[0] * len(paths), paths=paths)
    workers = default_workers() if workers is None else workers
    feed, bad = make_feed(
        split, runner.preprocess, cache=cache, workers=max(1, workers), eval_batch_size=batch_size, desc="decode ood"
    )
    if not len(feed):  # one line, not one per file
        raise UsageError(
            f"{FLAG} '{folder}': none of its {len(paths)} image files can be read (first: {bad[0][0]}: "
            f"{bad[0][1]}): pass a folder of readable images"
        )
    for path, reason in bad:
        log.warning("left out %s: %s", one_line(path), one_line(reason))
    return feed, bad


def sharded_scores(runner, feed, *, world=None, desc: str = "ood scores") -> dict[str, np.ndarray]:
    """{score: one number per image of `feed`, in order}: every score `runner.ood_scores` gives. Under torchrun
    each rank scores its block of whole batches and every rank gets all the scores."""
    world = world or current()
    block = batch_block(len(feed.batches()), world.rank, world.size) if world.distributed else None
    batches = feed.batches(block)
    parts = [runner.ood_scores(x)[1] for x, _ in progress(batches, total=len(batches), desc=desc, unit="batch")]
    return _joined([p for p in gather(_joined(parts), world) if p])


def _joined(parts: list[dict]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {name: np.concatenate([np.asarray(p[name], dtype=np.float64) for p in parts]) for name in parts[0]}


def known_scores(runner, logits, feed, unknown: dict, *, world=None) -> dict[str, np.ndarray]:
    """The evaluated split's scores: from `logits` (msp, energy) where the model gives no kNN score (`unknown`
    has none), else one more pass over `feed` for the features."""
    if "knn" in unknown:
        return sharded_scores(runner, feed, world=world, desc="ood scores (known)")
    return oodscores.scores({"logits": np.asarray(logits)}, runner.task)


def measure_score(known: np.ndarray, unknown: np.ndarray, threshold: float | None) -> dict:
    """AUROC, FPR at 95% TPR, and at `threshold` (None: the model stores none) the rejected fractions, with a
    histogram of both sets' scores (shared bins) for the figure; non-finite scores are counted and left out."""
    k, u = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    fk, fu = k[np.isfinite(k)], u[np.isfinite(u)]
    y = np.r_[np.zeros(len(fk)), np.ones(len(fu))]
    t95 = oodscores.threshold_for(fk, TPR) if len(fk) and len(fu) else None  # a model that gives NaN everywhere
    out = {
        "auroc": None if t95 is None else float(roc_auc_score(y, np.r_[fk, fu])),
        "fpr_at_95_tpr": None if t95 is None else float(np.mean(fu <= t95)),
        "threshold_at_95_tpr": t95,
        "threshold": None if threshold is None else float(threshold),
        "rejected_unknown": None if threshold is None else float(np.mean(u > threshold)),
        "rejected_known": None if threshold is None else float(np.mean(k > threshold)),
        "histogram": histogram(fk, fu, threshold),
    }
    if len(fk) < len(k) or len(fu) < len(u):
        out["non_finite"] = {"known": int(len(k) - len(fk)), "unknown": int(len(u) - len(fu))}
    return out


def histogram(known: np.ndarray, unknown: np.ndarray, threshold: float | None, bins: int = HIST_BINS) -> dict:
    """Counts of `known` and `unknown` in `bins` shared bins spanning both (and the threshold)."""
    both = np.r_[known, unknown] if threshold is None else np.r_[known, unknown, threshold]
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "edges": edges.tolist(),
        "known": np.histogram(known, edges)[0].tolist(),
        "unknown": np.histogram(unknown, edges)[0].tolist(),
    }


def ood_metrics(known: dict, unknown: dict, record: dict | None, *, folder: str, split: str, left_out) -> dict:
    """eval.json's "ood" block: per score the model gives (both sets have it), its measures (`measure_score`) at
    the record's thresholds, with the definitions, the counts and the unknown images left out."""
    stored = (record or {}).get("thresholds", {})
    names = [n for n in oodscores.SCORES if n in known and n in unknown]
    out = {
        "data": folder,
        "split": split,
        "known_images": int(len(known[names[0]])),
        "unknown_images": int(len(unknown[names[0]])),
        "tpr": TPR,
        "definitions": DEFINITIONS,
        "stored": None
        if record is None
        else {k: record.get(k) for k in ("accept", "thresholds", "temperature", "bank_size", "k", "val_images")},
        "scores": {n: measure_score(known[n], unknown[n], stored.get(n)) for n in names},
        "left_out": [{"path": p, "reason": r} for p, r in left_out],
    }
    if record is None:
        out["note"] = NO_RECORD
    return out


def evaluate_ood(runner, folder: str, logits, feed, *, split: str, unknown_feed=None, world=None, **feed_kw) -> dict:
    """eval.json's "ood" block for `runner` on `folder` against the evaluated split (`logits` of `feed`).
    `unknown_feed`: (feed, left out) of the folder when the caller decoded it already (`ood_feed`)."""
    world = world or current()
    ufeed, bad = unknown_feed or ood_feed(folder, runner, **feed_kw)
    unknown = sharded_scores(runner, ufeed, world=world, desc="ood scores (unknown)")
    known = known_scores(runner, logits, feed, unknown, world=world)
    return ood_metrics(known, unknown, runner.ood, folder=os.path.abspath(folder), split=split, left_out=bad)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_ood(o: dict) -> str:
    """The text report's lines for eval.json's "ood" block."""
    accept = (o.get("stored") or {}).get("accept")
    lines = [
        f"out-of-distribution: {o['unknown_images']} unknown images ({o['data']}) against {o['known_images']} "
        f"known ({o['split']}); AUROC with unknown as positive, FPR = unknown accepted at {o['tpr']:.0%} of known",
        f"{'score':<7}  {'AUROC':>6}  {'FPR@95':>6}  {'threshold':>9}  {'rejected unknown':>16}  {'rejected known':>14}",
    ]
    for name, s in o["scores"].items():
        t = "-" if s["threshold"] is None else f"{s['threshold']:.4g}"
        auroc, fpr = (_num(s[key], "6.4f") for key in ("auroc", "fpr_at_95_tpr"))
        lines.append(
            f"{name:<7}  {auroc:>6}  {fpr:>6}  {t:>9}  {_pct(s['rejected_unknown']):>16}  {_pct(s['rejected_known']):>14}"
        )
    if "note" in o:
        lines.append(f"({o['note']})")
    elif accept is not None:
        lines.append(f"(stored thresholds accept {accept:.0%} of the validation images they were fitted on)")
    n = len(o["left_out"])
    if n:
        lines.append(f"({n} unknown image file{'s' * (n != 1)} could not be read: left out, listed in eval.json)")
    return "\n".join(lines)


def plot_name(score: str) -> str:
    return f"ood_{score}.png"


def write_ood_plots(o: dict, out: str, title: str = "") -> None:
    """ood_SCORE.png per score of eval.json's "ood" block into `out`: the known and unknown histograms and the
    stored threshold."""
    for name, s in o["scores"].items():
        t = f"{title}: {name}" if title else name
        plot_ood_histogram(s["histogram"], os.path.join(out, plot_name(name)), t, score=name, threshold=s["threshold"])
