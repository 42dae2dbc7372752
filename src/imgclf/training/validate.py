"""Validation during training: a model's metrics columns on the validation feed (each rank its block of batches
under torchrun, every rank all the metrics)."""

from __future__ import annotations

import torch

from imgclf.core.errors import TrainingDiverged
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import infer_sharded
from imgclf.training.plan import RunPlan


def validation_columns(module, feed, plan: RunPlan, classes: list[str], *, desc: str, prefix: str = "") -> dict:
    """{prefix + "val_loss", prefix + "val_acc", prefix + "val_macro_f1"} of `module` on `feed`'s evaluation
    batches, in the run's precision."""
    logits, labels = infer_sharded(
        module, feed, plan.device, plan.amp, world=plan.world, desc=desc, channels_last=plan.cfg.channels_last
    )
    if not bool(torch.isfinite(logits).all()):  # the same logits on every rank (gathered): every rank stops
        whose = "EMA's" if prefix == "ema_" else "model's"
        raise TrainingDiverged(f"the {whose} outputs on the validation images are not finite")
    m = compute_metrics(logits, labels, classes)
    return {prefix + "val_loss": m["loss"], prefix + "val_acc": m["accuracy"], prefix + "val_macro_f1": m["macro_f1"]}
