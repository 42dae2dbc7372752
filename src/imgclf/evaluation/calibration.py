"""How far to trust a model's probabilities: calibration error, temperature scaling and selective prediction.

- Expected calibration error (ECE; Naeini et al. 2015, as Guo et al. 2017 measure it): the top-1 confidence
  c_i = max_k p_ik of each of the n images is put in one of B = 15 equal-width bins, bin m holding
  c in ((m-1)/B, m/B]; ECE = sum over bins of |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|. 0 is a model
  whose confidence is its accuracy; a model that says 90% and is right 70% of the time has 0.2.
- Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0 fitted on
  the validation split's logits z by minimising the negative log-likelihood of softmax(z / T). Dividing every
  logit by the same positive number keeps their order, so the predicted labels (and the accuracy) are unchanged;
  only the confidence moves. `imgclf calibrate` stores T in the checkpoint; every runner applies it (infer/runtime.py)
  and every export has it in its graph (exporting/export.py).
- Selective prediction: the coverage (fraction of images whose top-1 confidence is at least P) and the accuracy
  on those, at a few thresholds P: what `predict --min-confidence P` would answer and how often it is right.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.compute.distributed import World
from imgclf.core.errors import DataError, UsageError
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.pipeline import default_workers
from imgclf.evaluation.label_calibration import (
    ECE_BINS,
    T_MAX,
    T_MIN,
    LabelCalibrationResult,
    binary_reliability,
    calibrate_labels,
    format_label_calibration,
)
from imgclf.evaluation.multilabel import parse_goal
from imgclf.evaluation.ood_fit import asked, check_fit_options, fit_for_data, fitting_runner, summary
from imgclf.infer.logits import split_logits
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models.checkpoint import save_checkpoint, task_of, temperature_of

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.7, 0.9)  # evaluate's coverage / accuracy table
# ECE_BINS, and the bounds of the fitted temperature T_MIN, T_MAX (label_calibration.py, shared with a multi-label
# model's per-label fit): NLL(T) is unimodal in T (convex in 1/T), so the minimum inside is found; a fit that ends
# on a bound means the split is too easy (every image right: T -> 0) or the model is noise


def _top1(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 confidence, whether the top-1 label is right), float64 and bool arrays of length N."""
    p = probs.double() if isinstance(probs, torch.Tensor) else torch.as_tensor(np.asarray(probs, dtype=np.float64))
    conf, pred = p.max(1)
    return conf.numpy(), (pred == torch.as_tensor(labels)).numpy()


def reliability(probs, labels, bins: int = ECE_BINS) -> list[dict]:
    """Per bin m (confidence in ((m-1)/bins, m/bins]): its edges, its images, their accuracy and mean confidence
    (None where the bin is empty)."""
    conf, right = _top1(probs, labels)
    return binary_reliability(conf, right, bins)  # the top-1 confidence against whether the top-1 was right


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE of N x C probabilities against N labels, with `bins` equal-width bins of the top-1 confidence (module
    docstring); nan for no images."""
    rows = reliability(probs, labels, bins)
    n = sum(r["images"] for r in rows)
    if not n:
        return float("nan")
    return float(sum(r["images"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["images"]))


def selective(probs, labels, thresholds=THRESHOLDS) -> list[dict]:
    """For each threshold P: coverage (fraction of images with top-1 confidence >= P) and accuracy on those
    (None when none is covered)."""
    conf, right = _top1(probs, labels)
    out = []
    for t in thresholds:
        sel = conf >= t
        k = int(sel.sum())
        out.append(
            {
                "threshold": float(t),
                "coverage": float(k / len(conf)) if len(conf) else float("nan"),
                "covered": k,
                "accuracy": float(right[sel].mean()) if k else None,
            }
        )
    return out


def trust_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """What evaluate adds to eval.json: ECE, its reliability bins and the coverage table, from logits whose
    softmax is the probability the model reports (its temperature and TTA already in)."""
    probs = logits.float().softmax(1)
    return {
        "ece": expected_calibration_error(probs, labels, bins),
        "ece_bins": bins,
        "reliability": reliability(probs, labels, bins),
        "selective": selective(probs, labels),
    }


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of softmax(logits / temperature), in float64."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [T_MIN, T_MAX] that minimises nll(logits, labels, T).

    scipy's bounded Brent minimiser on log T (scipy is installed already: scikit-learn needs it): NLL is convex
    in 1/T, so unimodal in log T, and Brent finds its minimum to 1e-6 in log T in a few dozen evaluations with
    no learning rate or iteration count to choose (LBFGS on log T, as Guo et al., needs both) and no randomness."""
    from scipy.optimize import minimize_scalar  # noqa: PLC0415 - heavy; only calibrate fits a temperature

    z, y = logits.double(), labels.long()
    res = minimize_scalar(
        lambda s: float(F.cross_entropy(z / math.exp(s), y)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(math.exp(res.x))
    if min(t / T_MIN, T_MAX / t) < 1.01:
        log.warning(
            "the fitted temperature %.3g is at its bound [%g, %g]: the split is too easy (every image right) or "
            "too small to calibrate on",
            t,
            T_MIN,
            T_MAX,
        )
    return t


@dataclass
class CalibrationResult:
    temperature: float  # fitted, now in the checkpoint
    previous_temperature: float  # the checkpoint's before (1.0 if it had none): what "before" was measured with
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy: float  # top-1 on the split, the same before and after (checked)
    images: int
    split: str
    data: str
    weights: str
    ood: dict | None = None  # the out-of-distribution record fitted again with the new temperature (ood_fit.py)

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    weights: str,
    data: str | None = None,
    split: str = "val",
    data_root: str | None = None,
    *,
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    cache: str = "auto",
    threshold: str | None = None,
    ood_bank: int | None = None,
    ood_accept: float | None = None,
    refit_ood: bool = True,
) -> CalibrationResult | LabelCalibrationResult:
    """Fit the temperature of checkpoint `weights` on `split` of `data` (default: the data it was trained on,
    opened as training opened it) and store it in the checkpoint: the file is rewritten atomically with a
    `temperature` entry and a `calibration` record (where it was fitted, ECE and NLL before and after) added,
    everything else as it was. ECE and NLL "before" are with the temperature the checkpoint had (1.0 if none).

    What training calls at its end with the run's best checkpoint (`train --calibrate`), on rank 0 only under
    torchrun: it runs in this process alone.

    A multi-label checkpoint gets one temperature per label (label_calibration.py), stored as a list, and its
    thresholds carried with them, or fitted again for `threshold` (--threshold GOAL, multilabel.parse_goal).

    The out-of-distribution record and bank (ood_fit.py) are fitted again with the new temperature on the same split
    (`ood_bank`, `ood_accept`: None as before, `ood_fit.asked`); `refit_ood=False`: not (training fits its own)."""
    goal = parse_goal(threshold) if threshold is not None else None
    ckpt = _checkpoint_of(weights)
    ood_bank, ood_accept = asked(ckpt, ood_bank, ood_accept)
    check_fit_options(ood_bank, ood_accept)
    if goal is not None and task_of(ckpt)[0] != MULTILABEL:
        raise UsageError(
            f"--threshold is for a multi-label model (a threshold per label); '{weights}' gives one class per image: "
            "drop --threshold"
        )
    # the fit needs the network's own logits (T = 1), in fp32 on every device
    raw = CheckpointRunner(weights, device=device, precision="fp32", ckpt=ckpt, temperature=1.0)
    # one process, whatever the process group: training calls this on rank 0 alone (it also writes the file)
    workers = default_workers() if workers is None else workers
    logits, labels, feed, bad, src = split_logits(
        raw, data, split, data_root, batch_size=batch_size, workers=workers, cache=cache, world=World()
    )
    if not len(labels):
        raise DataError(f"the {split} split of {data or raw.config.get('data')} has no images to calibrate on")
    where = {"split": split, "data": src.location, "weights": os.path.abspath(weights)}
    if raw.task == MULTILABEL:
        r = calibrate_labels(logits, labels, raw.classes, temperature_of(ckpt), raw.thresholds, goal, **where)
        ckpt["temperature"], ckpt["thresholds"] = r.temperature, r.thresholds
    else:
        before, t = temperature_of(ckpt), fit_temperature(logits, labels)
        r = _measure(logits, labels, before, t, **where)
        ckpt["temperature"] = t
    if refit_ood:  # with the new temperature: the record's must be the one its logits are divided by
        runner = fitting_runner(weights, ckpt, device=device)
        fit = dict(bank_size=ood_bank, accept=ood_accept, split=split, workers=workers, cache=cache)
        ckpt["ood"] = fit_for_data(runner, src, feed, left_out=len(bad), by="calibrate", **fit)
        r.ood = ckpt["ood"]["record"]
    return _store(ckpt, r, weights)


def _checkpoint_of(weights: str) -> dict:
    """The checkpoint `weights` holds, validated; an exported file is refused in one line."""
    runner = open_model(weights, device="cpu", precision="fp32")
    if not isinstance(runner, CheckpointRunner):
        raise UsageError(
            f"'{weights}' is an exported model ({runner.format}): calibrate the checkpoint it came from, then "
            f"export again (the temperature goes into the exported graph)"
        )
    return runner.ckpt


def _store(ckpt: dict, result, weights: str):
    """Rewrite the checkpoint with its new temperature (set by the caller) and the calibration record."""
    ckpt["calibration"] = {k: v for k, v in result.to_dict().items() if k not in ("weights", "ood")}  # ood: its own
    save_checkpoint(ckpt, weights)
    t = ckpt["temperature"]
    shown = ", ".join(f"{v:.4g}" for v in t) if isinstance(t, list) else f"{t:.4g}"
    log.info("temperature %s stored in %s", shown, weights)
    return result


def _measure(logits, labels, before: float, after: float, **where) -> CalibrationResult:
    acc = [float((logits.div(t).argmax(1) == labels).double().mean()) for t in (before, after)]
    if acc[0] != acc[1]:  # only where float32 rounding makes two logits of an image tie after the division
        log.warning("temperature scaling changed the accuracy: %.6f -> %.6f (ties after rounding)", acc[0], acc[1])
    return CalibrationResult(
        temperature=after,
        previous_temperature=before,
        ece_before=expected_calibration_error(logits.double().div(before).softmax(1), labels),
        ece_after=expected_calibration_error(logits.double().div(after).softmax(1), labels),
        nll_before=nll(logits, labels, before),
        nll_after=nll(logits, labels, after),
        accuracy=acc[1],
        images=int(len(labels)),
        **where,
    )


def format_calibration(r: CalibrationResult | LabelCalibrationResult) -> str:
    ood = [summary(r.ood)] if r.ood is not None else []
    if isinstance(r, LabelCalibrationResult):
        return "\n".join([format_label_calibration(r), *ood])
    prev = f" (replacing {r.previous_temperature:.4g})" if r.previous_temperature != 1.0 else ""
    return "\n".join(
        [
            f"temperature {r.temperature:.4g}{prev} fitted on {r.data} {r.split} ({r.images} images), "
            f"stored in {r.weights}",
            f"ECE ({ECE_BINS} bins) {r.ece_before:.4f} -> {r.ece_after:.4f}   NLL {r.nll_before:.4f} -> "
            f"{r.nll_after:.4f}   accuracy {r.accuracy:.4f} (unchanged)",
            *ood,
        ]
    )
