"""Calibration of a multi-label model: the ECE of each label's sigmoid probabilities, and one temperature per label
(`imgclf calibrate` on a multi-label checkpoint).

- Per-label ECE: label k's probabilities p_ik (one per image) in B = 15 equal-width bins, bin m holding p in
  ((m-1)/B, m/B]; ECE_k = sum over bins of |B_m| / n * |fraction of positives(B_m) - mean p(B_m)|: 0 is a label
  whose "70%" images hold it 70% of the time. The summary is the mean over labels, and the pooled ECE of every
  (image, label) pair together.
- Temperature per label: temperature scaling (Guo et al. 2017) applied to each sigmoid on its own: T_k > 0
  minimises the binary cross-entropy of sigmoid(z_k / T_k) against label k on the split (scipy's bounded Brent on
  log T_k, as calibration.fit_temperature does for one softmax T). The checkpoint stores them as a list under
  "temperature"; models/tta.wrap divides column k by T_k everywhere the model runs (and exports trace it).
- A label's set is decided by sigmoid(z_k / T_k) >= t_k, so a new T_k moves it unless t_k moves too: without
  --threshold each stored threshold is carried to t_k' = sigmoid(logit(t_k) * T_k_old / T_k_new), which keeps
  every image's label set exactly as it was; with --threshold GOAL the thresholds are fitted again for GOAL on
  the calibrated probabilities of the same split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.evaluation.multilabel import fit_thresholds

log = logging.getLogger(__name__)

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # as calibration.py's bounds


def binary_reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """calibration.reliability's bins for probabilities `p` of binary outcomes `y` (any shape, flattened):
    "accuracy" is the fraction of positives in the bin, "confidence" its mean probability."""
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    idx = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        sel = idx == m
        k = int(sel.sum())
        rows.append(
            {
                "low": m / bins,
                "high": (m + 1) / bins,
                "images": k,
                "accuracy": float(y[sel].mean()) if k else None,
                "confidence": float(p[sel].mean()) if k else None,
            }
        )
    return rows


def binary_ece(p, y, bins: int = ECE_BINS) -> float:
    """ECE of probabilities `p` against binary outcomes `y` (module docstring); nan for none."""
    rows = binary_reliability(p, y, bins)
    n = sum(r["images"] for r in rows)
    if not n:
        return float("nan")
    return float(sum(r["images"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["images"]))


def label_calibration(scores: np.ndarray, targets: np.ndarray, classes: list[str], bins: int = ECE_BINS) -> dict:
    """Per-label ECE, their mean, the pooled ECE and its reliability bins, of N x C probabilities."""
    per = {c: binary_ece(scores[:, k], targets[:, k], bins) for k, c in enumerate(classes)}
    vals = [v for v in per.values() if v == v]
    return {
        "ece_per_label": per,
        "ece_mean": float(np.mean(vals)) if vals else float("nan"),
        "ece": binary_ece(scores, targets, bins),  # pooled over every (image, label)
        "ece_bins": bins,
        "reliability": binary_reliability(scores, targets, bins),
    }


def _bce(z: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return float(F.binary_cross_entropy_with_logits(z / t, y))


def fit_label_temperatures(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> tuple[list, list]:
    """(one T per label in [T_MIN, T_MAX] minimising that label's BCE, notes). A label the split holds only
    positives or only negatives of keeps T = 1 (nothing to fit: the BCE falls as T shrinks, without a minimum)."""
    from scipy.optimize import minimize_scalar  # noqa: PLC0415 - heavy; only calibrate fits a temperature

    z, y = logits.double(), targets.double()
    out, notes = [], []
    for k, name in enumerate(classes):
        pos = int(y[:, k].sum())
        if pos in (0, len(y)):
            out.append(1.0)
            notes.append(f"{name}: the split has {'no' if pos == 0 else 'only'} positive images, T left at 1")
            continue
        res = minimize_scalar(
            lambda s, k=k: _bce(z[:, k], y[:, k], math.exp(s)),
            bounds=(math.log(T_MIN), math.log(T_MAX)),
            method="bounded",
            options={"xatol": 1e-6},
        )
        t = float(math.exp(res.x))
        if t / T_MIN < 1.01:
            notes.append(f"{name}: T {t:.3g} is at its bound (the split separates the label perfectly, or is tiny)")
        elif T_MAX / t < 1.01:
            notes.append(
                f"{name}: T {t:.3g} is at its bound (its scores are off by a bias a temperature cannot fix, pushed "
                "towards 0.5; or the split is tiny)"
            )
        out.append(t)
    return out, notes


def carry_thresholds(thresholds, before, after) -> list[float]:
    """The thresholds on sigmoid(z / after) that take the same decisions as `thresholds` on sigmoid(z / before)
    (module docstring); 0 and 1 stay."""
    t = np.asarray(thresholds, dtype=np.float64)
    ratio = np.broadcast_to(np.asarray(before, dtype=np.float64), t.shape) / np.asarray(after, dtype=np.float64)
    with np.errstate(divide="ignore"):
        moved = 1.0 / (1.0 + np.exp(-np.log(t / (1.0 - t)) * ratio))
    return [float(o if o in (0.0, 1.0) else m) for o, m in zip(t, moved)]


@dataclass
class LabelCalibrationResult:
    temperature: list  # fitted, one per label, now in the checkpoint
    previous_temperature: object  # the checkpoint's before (1.0, a float, or a list)
    ece_before: dict  # per label
    ece_after: dict
    ece_mean_before: float
    ece_mean_after: float
    bce_before: float  # mean over labels and images
    bce_after: float
    thresholds: list  # now in the checkpoint
    previous_thresholds: list
    threshold_goal: str | None  # --threshold, or None (carried: the label sets unchanged)
    notes: list
    images: int
    split: str
    data: str
    weights: str
    task: str = "multilabel"
    ood: dict | None = None  # the out-of-distribution record fitted again with the new temperatures (ood_fit.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _per_label_scale(before, n: int) -> torch.Tensor:
    return torch.as_tensor([float(before)] * n if isinstance(before, (int, float)) else before, dtype=torch.float64)


def calibrate_labels(logits, targets, classes, before, thresholds, goal, **where) -> LabelCalibrationResult:
    """Fit the per-label temperatures on T = 1 `logits` against multi-hot `targets`, measure ECE and BCE before
    (with the checkpoint's temperature `before`) and after, and the thresholds that go with them."""
    z, y = logits.double(), targets.double()
    after, notes = fit_label_temperatures(z, y, classes)
    t0, t1 = _per_label_scale(before, len(classes)), torch.as_tensor(after, dtype=torch.float64)
    p0, p1 = (z / t0[None, :]).sigmoid().numpy(), (z / t1[None, :]).sigmoid().numpy()
    if goal is None:
        new_thr = carry_thresholds(thresholds, t0.numpy(), t1.numpy())
    else:
        new_thr, fit_notes = fit_thresholds(p1, y.numpy(), goal)
        notes += [f"thresholds: {n}" for n in fit_notes]
    c0, c1 = label_calibration(p0, y.numpy(), classes), label_calibration(p1, y.numpy(), classes)
    return LabelCalibrationResult(
        temperature=after,
        previous_temperature=before,
        ece_before=c0["ece_per_label"],
        ece_after=c1["ece_per_label"],
        ece_mean_before=c0["ece_mean"],
        ece_mean_after=c1["ece_mean"],
        bce_before=float(F.binary_cross_entropy_with_logits(z / t0[None, :], y)),
        bce_after=float(F.binary_cross_entropy_with_logits(z / t1[None, :], y)),
        thresholds=new_thr,
        previous_thresholds=list(thresholds),
        threshold_goal=None if goal is None else str(goal),
        notes=notes,
        images=int(len(y)),
        **where,
    )


def format_label_calibration(r: LabelCalibrationResult) -> str:
    w = max([5] + [len(c) for c in r.ece_before])
    how = (
        f"thresholds fitted again for {r.threshold_goal}"
        if r.threshold_goal
        else "thresholds carried with them (every image's labels unchanged)"
    )
    lines = [
        f"a temperature per label fitted on {r.data} {r.split} ({r.images} images), stored in {r.weights}; {how}",
        f"ECE ({ECE_BINS} bins) mean over labels {r.ece_mean_before:.4f} -> {r.ece_mean_after:.4f}   BCE "
        f"{r.bce_before:.4f} -> {r.bce_after:.4f}",
        f"{'label':<{w}}  temperature  threshold   ECE before  ECE after",
    ]
    for k, c in enumerate(r.ece_before):
        lines.append(
            f"{c:<{w}}  {r.temperature[k]:11.4g}  {r.thresholds[k]:9.4g}   {r.ece_before[c]:10.4f}  "
            f"{r.ece_after[c]:9.4f}"
        )
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)
