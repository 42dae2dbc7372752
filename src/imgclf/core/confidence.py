"""The one "unsure" rule (`--min-confidence P`), shared by `predict`, `predict_files` and the server; and the one
multi-label answer (`multilabel_result`: the label set and every label's score), which refuses that rule.

Without torch, so that the slim serving install (deploy/slim/MODULES, no PyTorch) answers exactly as
`imgclf predict` does.
"""

from __future__ import annotations

import logging

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL, label_set

log = logging.getLogger(__name__)


def check_min_confidence(p, name: str = "--min-confidence") -> float | None:
    """`p` as a float in (0, 1], None for None; anything else is a UsageError whose message starts with `name`
    (the flag, or a request's field)."""
    if p is None:
        return None
    try:
        v = float(p)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0.0 < v <= 1.0:  # nan fails too
        shown = str(p)[:20]
        raise UsageError(
            f"{name} {shown}: give a probability above 0 and at most 1, such as 0.7 "
            "(predictions whose top probability is below it are answered 'unsure')"
        )
    return v


def mark_unsure(result: dict, min_confidence: float | None) -> dict:
    """`result` (with "label" and "probability", the top one) answered "unsure" below `min_confidence`: an
    "unsure" field (true / false) and, when true, "label" None; the rest (index, probability, top_k) kept, so
    the top label stays visible. Unchanged without a threshold. The one rule for predict and the server."""
    if min_confidence is not None:
        result["unsure"] = float(result["probability"]) < min_confidence
        if result["unsure"]:
            result["label"] = None
    return result


def refuse_for_multilabel(task: str, min_confidence: float | None, name: str = "--min-confidence") -> None:
    """A multi-label model has no "top probability" to be unsure about (each label has its own sigmoid score and
    threshold): `min_confidence` with one is a UsageError whose message starts with `name`."""
    if task == MULTILABEL and min_confidence is not None:
        raise UsageError(
            f"{name} is for single-label models (it marks an image whose top class is below it 'unsure'); this "
            "model is multi-label, where each label has its own threshold: drop it (an empty label set already "
            "says the model found none of its labels)"
        )


def multilabel_result(probs, classes, thresholds) -> dict:
    """One image's multi-label answer, the same in predict, streaming predict and both servers: "labels" (the set,
    core.multilabel.label_set with the model's thresholds, in class order; possibly empty) and "scores" (every
    label -> its sigmoid probability, in class order)."""
    scores = {c: float(p) for c, p in zip(classes, probs)}
    return {"labels": label_set(scores.values(), thresholds, classes), "scores": scores}
