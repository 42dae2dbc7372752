"""The one "unsure" rule (`--min-confidence P`), shared by `predict`, `predict_files` and the server.

Without torch, so that the slim serving install (deploy/slim/MODULES, no PyTorch) answers exactly as
`imgclf predict` does.
"""

from __future__ import annotations

import logging

from imgclf.core.errors import UsageError

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
