"""More than one label per image, without torch: the task a model was trained for, its per-label thresholds, and
the label set they give.

A model is trained for one of two tasks: `single` (one class per image: softmax, the top class) or `multilabel`
(any number of labels per image, none included: one sigmoid per label, each compared with its own threshold).
Checkpoints and exports record the task and, for a multi-label model, one threshold per label (`task_fields`);
every reader (predict, streaming predict, serve, the slim ONNX server, evaluate) turns scores into a label set
with `label_set`, so they all give the same answer.
"""

from __future__ import annotations

import math

from imgclf.core.errors import CheckpointError

SINGLE = "single"
MULTILABEL = "multilabel"
TASKS = (SINGLE, MULTILABEL)
DEFAULT_THRESHOLD = 0.5
LABEL_SEPARATOR = "|"  # a manifest's label cell, a CSV row's `labels` cell: "cat|dog"


def is_threshold(t) -> bool:
    """A usable threshold: a finite number in [0, 1] (not a bool)."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0


def task_fields(meta: dict, n_classes: int, where: str = "this file") -> tuple[str, list[float] | None]:
    """The task and thresholds a checkpoint's or an export's metadata records, checked: an unknown task, or
    thresholds that are not one number in [0, 1] per class, is one CheckpointError line. Files from before the
    task was recorded are single-label. A multi-label file without thresholds uses 0.5 for every label."""
    task = meta.get("task") or SINGLE
    if task not in TASKS:
        raise CheckpointError(
            f"{where} is for task '{task}', which this imgclf does not know (it knows {', '.join(TASKS)}): "
            "upgrade imgclf or export the model again"
        )
    if task == SINGLE:
        return task, None
    thr = meta.get("thresholds")
    if thr is None:
        return task, [DEFAULT_THRESHOLD] * n_classes
    if not isinstance(thr, (list, tuple)) or len(thr) != n_classes or not all(is_threshold(t) for t in thr):
        raise CheckpointError(
            f"{where} has invalid thresholds (it needs one number from 0 to 1 per label, {n_classes} in all): "
            "fit them again with imgclf calibrate, or export the model again"
        )
    return task, [float(t) for t in thr]


def label_set(scores, thresholds, classes) -> list[str]:
    """The labels whose score reaches their threshold, in class order. `scores`: one probability per class (any
    sequence of numbers); `thresholds`: one per class."""
    return [c for c, s, t in zip(classes, scores, thresholds) if float(s) >= t]


def split_labels(cell: str) -> list[str]:
    """A label cell as its labels: "cat|dog" -> ["cat", "dog"], "" -> [] (an image with none of them); each label
    stripped, empty ones and repeats dropped, order kept."""
    out: list[str] = []
    for part in cell.split(LABEL_SEPARATOR):
        p = part.strip()
        if p and p not in out:
            out.append(p)
    return out


def join_labels(labels) -> str:
    """A label set as one cell: ["cat", "dog"] -> "cat|dog" (the manifest's own form; read back by split_labels)."""
    return LABEL_SEPARATOR.join(labels)
