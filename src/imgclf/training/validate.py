"""Validation during training: a model's metrics columns on the validation feed (each rank its block of batches
under torchrun, every rank all the metrics)."""

from __future__ import annotations

import torch

from imgclf.core.errors import TrainingDiverged
from imgclf.core.multilabel import MULTILABEL
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import infer_sharded
from imgclf.training.multilabel import multilabel_columns
from imgclf.training.plan import RunPlan


def validation_columns(
    module, feed, plan: RunPlan, classes: list[str], *, desc: str, prefix: str = "", keep: dict | None = None
) -> dict:
    """{prefix + "val_loss", prefix + "val_acc", prefix + "val_macro_f1"} of `module` on `feed`'s evaluation
    batches, in the run's precision; a multi-label run's columns are training/multilabel.py's (val_loss, val_mAP,
    val_micro_f1, val_macro_f1), and `keep[prefix]` gets its (probabilities, targets) as numpy arrays, for the
    thresholds the checkpoint fits."""
    logits, labels = infer_sharded(
        module, feed, plan.device, plan.amp, world=plan.world, desc=desc, channels_last=plan.cfg.channels_last
    )
    if not bool(torch.isfinite(logits).all()):  # the same logits on every rank (gathered): every rank stops
        whose = "EMA's" if prefix == "ema_" else "model's"
        raise TrainingDiverged(f"the {whose} outputs on the validation images are not finite")
    if plan.cfg.task == MULTILABEL:
        if keep is not None:
            keep[prefix] = (torch.sigmoid(logits).numpy(), labels.numpy())
        return multilabel_columns(logits, labels, classes, prefix)
    m = compute_metrics(logits, labels, classes)
    return {prefix + "val_loss": m["loss"], prefix + "val_acc": m["accuracy"], prefix + "val_macro_f1": m["macro_f1"]}
