"""Out-of-distribution ("none of these") scores and the one rejection rule, without torch, so that the slim
serving install answers exactly as `imgclf predict` does.

Three scores, each higher for an input less like the training data:

- `msp`: 1 - the maximum softmax probability (a multi-label model: 1 - its highest sigmoid score);
- `energy`: the free energy -logsumexp(logits) (Liu et al., NeurIPS 2020; a multi-label model: the joint energy
  -sum(log(1 + exp(logit))), Wang et al., NeurIPS 2021);
- `knn`: the Euclidean distance from the image's L2-normalised penultimate features to its k-th nearest neighbour
  in a bank of normalised training features (Sun et al., ICML 2022).

All three use the logits a runner gives (after its calibrated temperature), so a record fitted with one
temperature is refitted by `imgclf calibrate` when it changes. The record (`fit_record`) holds each score's
threshold, chosen on the validation split so that `accept` of in-distribution images pass; an image is
"unknown" when its score is above the threshold. Checkpoints store the record with the bank of features; exports
store the record in their metadata and, where they compute the feature output, the kNN distance as an output.
"""

from __future__ import annotations

import math

import numpy as np

from imgclf.core.errors import CheckpointError, UsageError
from imgclf.core.multilabel import MULTILABEL

SCORES = ("msp", "energy", "knn")
DEFAULT_SCORE = "knn"  # where the model has a bank; else energy (`default_score`)
DEFAULT_ACCEPT = 0.95  # the fraction of in-distribution validation images a threshold lets through
DEFAULT_BANK = 10_000  # training images whose features make the kNN bank (a random subsample of larger sets)
RECORD_VERSION = 1
OUTPUTS = ("logits", "features", "knn")  # the names of an export's outputs, in order


def neighbours_for(bank_size: int) -> int:
    """The k of the kNN score for a bank of `bank_size` features: Sun et al. use k = 50 on CIFAR-10's 50,000
    training images and scale k with the fraction of the training set kept (k = 1 at 1%); the same rule, one
    neighbour per 1,000 features, between 1 and 50."""
    return int(min(50, max(1, round(bank_size / 1000))))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray, task: str) -> np.ndarray:
    """1 - the top probability (softmax), or 1 - the highest sigmoid score of a multi-label model."""
    z = np.asarray(logits, dtype=np.float64)
    if task == MULTILABEL:
        return 1.0 - 1.0 / (1.0 + np.exp(-z.max(axis=1)))
    return 1.0 - np.exp(z.max(axis=1) - _logsumexp(z))


def energy_score(logits: np.ndarray, task: str) -> np.ndarray:
    """The free energy -logsumexp(logits); a multi-label model's joint energy -sum(softplus(logits))."""
    z = np.asarray(logits, dtype=np.float64)
    if task == MULTILABEL:
        return -np.logaddexp(0.0, z).sum(axis=1)
    return -_logsumexp(z)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """The distance from each L2-normalised feature row to its k-th nearest row of `bank` (normalised too):
    sqrt(2 - 2 cos). The same numbers as `models/embedding.FeatureOutputs` computes in a graph."""
    sims = np.asarray(features, dtype=np.float32) @ np.asarray(bank, dtype=np.float32).T
    k = min(int(k), sims.shape[1])
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(2.0 - 2.0 * kth.astype(np.float64), 0.0))


def scores(outputs: dict, task: str) -> dict[str, np.ndarray]:
    """Every score a model's outputs allow: msp and energy from "logits", knn from "knn" (the k-th distance,
    when the model has a bank). `outputs` maps OUTPUTS names to arrays (N rows each)."""
    logits = np.asarray(outputs["logits"])
    out = {"msp": msp_score(logits, task), "energy": energy_score(logits, task)}
    if outputs.get("knn") is not None:
        out["knn"] = np.asarray(outputs["knn"], dtype=np.float64).reshape(-1)
    return out


def threshold_for(known: np.ndarray, accept: float) -> float:
    """The threshold that accepts (score <= threshold) `accept` of the in-distribution scores `known`: the fewest
    of the lowest scores that make up at least that fraction are accepted, and the threshold lies halfway from the
    highest of them to the next score, so that float noise (another batch, an export) cannot move a validation
    image across it; the highest score itself where nothing is above it."""
    known = np.sort(np.asarray(known, dtype=np.float64))
    known = known[np.isfinite(known)]
    if not len(known):
        raise ValueError("no finite in-distribution score to fit a threshold on")
    j = min(len(known) - 1, max(0, math.ceil(accept * len(known) - 1e-9) - 1))
    return float(known[j] if j + 1 == len(known) else (known[j] + known[j + 1]) / 2)


def fit_record(
    val_scores: dict[str, np.ndarray], *, accept: float, temperature, bank_size: int = 0, k: int | None = None, **more
) -> dict:
    """The record stored in an artifact: each score's threshold for `accept` on the validation images'
    `val_scores`, the temperature the logits had, the bank's size and k (0 and None without a bank), and
    anything else worth keeping (`more`: images used, the split, ...)."""
    thresholds = {name: threshold_for(v, accept) for name, v in val_scores.items() if name in SCORES}
    return {
        "version": RECORD_VERSION,
        "accept": float(accept),
        "thresholds": thresholds,
        "temperature": temperature,
        "bank_size": int(bank_size),
        "k": int(k) if k is not None else None,
        "val_images": int(len(next(iter(val_scores.values())))) if val_scores else 0,
        **more,
    }


def check_record(record, where: str) -> dict | None:
    """`record` if it is a usable OOD record (None stays None); else one CheckpointError line naming `where`."""
    if record is None:
        return None
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("thresholds"), dict)
        and record["thresholds"]
        and all(n in SCORES and _finite(t) for n, t in record["thresholds"].items())
        and _finite(record.get("accept"))
    )
    if not ok:
        raise CheckpointError(
            f"{where} has a damaged out-of-distribution record: run imgclf calibrate on the checkpoint again"
        )
    return record


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def default_score(record: dict | None) -> str:
    """The score `--reject ood` uses when `--ood-score` is not given: knn where the record has it, else energy."""
    have = (record or {}).get("thresholds", {})
    return DEFAULT_SCORE if DEFAULT_SCORE in have else "energy"


def check_reject(
    reject: str | None, score: str | None, record: dict | None, name: str = "--reject", score_name: str = "--ood-score"
) -> str | None:
    """The score a prediction's rejection uses (None: no rejection). `reject` is None or "ood"; `score` one of
    SCORES or None (the record's default). One UsageError line, starting with `name` (or `score_name`: a server
    request's field names them), for anything the model cannot do."""
    if reject is None:
        if score is not None:
            raise UsageError(
                f"{score_name} {str(score)[:20]} needs {name} ood (it picks the score that rejection uses)"
            )
        return None
    if reject != "ood":
        raise UsageError(f"{name} {str(reject)[:20]}: the only rejection is 'ood' (out-of-distribution images)")
    if record is None:
        raise UsageError(
            f"{name} ood: this model has no out-of-distribution thresholds; fit them with "
            "`imgclf calibrate CHECKPOINT` (a checkpoint trained before training fitted them has none), then export it again for an exported file"
        )
    score = score or default_score(record)
    if score not in SCORES:
        raise UsageError(f"{score_name} {str(score)[:20]}: choose one of {', '.join(SCORES)}")
    if score not in record["thresholds"]:
        raise UsageError(
            f"{score_name} {score}: this model has no {score} threshold (it has "
            f"{', '.join(sorted(record['thresholds']))}); a kNN score needs the checkpoint or an ONNX export of it"
        )
    return score


def mark_unknown(result: dict, score: str, value: float, threshold: float) -> dict:
    """`result` (one image's answer) with "unknown" (true when `value` is above `threshold`) and "ood" (the
    score's name, value and threshold); an unknown image's "label" (single-label) or "labels" (multi-label) is
    None / [] while the rest (probabilities, scores) stays visible. The one rule of predict and both servers."""
    value = float(value)
    result["unknown"] = bool(value > threshold)
    result["ood"] = {"score": score, "value": value, "threshold": float(threshold)}
    if result["unknown"]:
        if "labels" in result:
            result["labels"] = []
        else:
            result["label"] = None
    return result


def usable(record: dict | None, knn: bool) -> dict | None:
    """`record` as a model file that can (`knn`) or cannot give the kNN distance may use it: without its knn
    threshold where the distance is not computed (an export without a "knn" output, test-time augmentation around
    an export), so that the default score and --reject's refusals say what this file can do."""
    if record is None or knn or "knn" not in record["thresholds"]:
        return record
    thresholds = {n: t for n, t in record["thresholds"].items() if n != "knn"}
    return {**record, "thresholds": thresholds} if thresholds else None
