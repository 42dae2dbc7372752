"""After each epoch: the best epoch so far, metrics.csv and TensorBoard, best.pt, epoch_N.pt and last.pt, and the
epoch's line in the log."""

from __future__ import annotations

import copy

from torch import nn

from imgclf.core.callback import Callback
from imgclf.core.multilabel import MULTILABEL
from imgclf.models.checkpoint import make_checkpoint
from imgclf.training.callbacks.stopping import improves, monitored
from imgclf.training.multilabel import fit_for, summary_columns


class Checkpointing(Callback):
    """The best epoch by --monitor (of the model, or of its EMA when that is better: best.pt says which weights it
    holds), then on rank 0 metrics.csv and TensorBoard, best.pt (if this epoch is the best), epoch_N.pt
    (--save-every) and last.pt, written last: a kill before it means this epoch is simply redone on resume."""

    order = 900  # after every other on_validation_end: the epoch an early stop ends on is saved too

    def on_validation_end(self, trainer, row: dict) -> None:
        st, cfg, run_dir = trainer.state, trainer.plan.cfg, trainer.run_dir
        value = monitored(row, cfg.monitor)
        improved = improves(value, st.best["value"], cfg.monitor)
        weights = "ema" if st.ema is not None and value != row[cfg.monitor] else "model"
        if improved:
            st.best = {"value": value, "epoch": st.epoch, "weights": weights}
        if not trainer.plan.world.main:  # every rank has the same rows (the validation is gathered), so the same best
            return
        run_dir.log_epoch(st.rows)
        columns = summary_columns(cfg.task)
        summary = {k: row["val_" + c] for k, c in columns}
        if "val_robust_acc" in row:
            summary["robust_accuracy"] = row["val_robust_acc"]
        if improved:
            prefix = "ema_val_" if weights == "ema" else "val_"  # the metrics of the weights best.pt holds
            kept = {k: row[prefix + c] for k, c in columns}
            if weights == "model" and "val_robust_acc" in row:
                kept["robust_accuracy"] = row["val_robust_acc"]
            scores = trainer.val_scores.get("ema_" if weights == "ema" else "")
            run_dir.save(run_checkpoint(trainer, kept, weights=weights, scores=scores), "best.pt")
        with_state = run_checkpoint(trainer, summary, state=st.state_dict(), scores=trainer.val_scores.get(""))
        if cfg.save_every and st.epoch % cfg.save_every == 0:
            run_dir.save(with_state, f"epoch_{st.epoch}.pt")
        run_dir.save(with_state, "last.pt")
        log_epoch(trainer, row, f"  *best*{' (EMA)' if weights == 'ema' else ''}" if improved else "")


def log_epoch(trainer, row: dict, best: str) -> None:
    """The epoch's line: its metrics, learning rate and seconds, and whether it is the best so far."""
    if trainer.plan.cfg.task == MULTILABEL:
        return log_multilabel_epoch(trainer, row, best)
    extra = f"  ema_val_acc {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
    if "val_robust_acc" in row:
        extra += f"  val_robust_acc {row['val_robust_acc']:.4f}"
    trainer.info(
        "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  lr %.3g  %.1fs%s",
        trainer.state.epoch,
        -(-trainer.total_steps // trainer.per_epoch),
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["val_macro_f1"],
        extra,
        row["lr"],
        row["seconds"],
        best,
    )


def log_multilabel_epoch(trainer, row: dict, best: str) -> None:
    """A multi-label epoch's line: train_acc is the labels decided right at 0.5, F1 is micro at 0.5."""
    extra = f"  ema_val_mAP {row['ema_val_mAP']:.4f}" if "ema_val_mAP" in row else ""
    trainer.info(
        "epoch %d/%d  train_loss %.4f  train_label_acc %.4f  val_loss %.4f  val_mAP %.4f  val_micro_f1 %.4f%s  "
        "lr %.3g  %.1fs%s",
        trainer.state.epoch,
        -(-trainer.total_steps // trainer.per_epoch),
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_mAP"],
        row["val_micro_f1"],
        extra,
        row["lr"],
        row["seconds"],
        best,
    )


def run_checkpoint(
    trainer, metrics: dict, *, state: dict | None = None, weights: str = "model", scores: tuple | None = None
) -> dict:
    """A checkpoint of the run now: the model (or, `weights="ema"`, the model with its EMA's weights where that
    averages) and its description, with `state` (TrainState.state_dict()) as its training state. Multi-label:
    `scores`, those weights' validation (probabilities, targets), give the thresholds fitted for --threshold (the
    one place they are fitted), kept with the goal and the fit's notes; without them, 0.5 each."""
    model = trainer.state.model
    if weights == "ema":  # the whole model with the EMA's weights where it averages
        model = with_part_state(model, trainer.step_model, trainer.state.ema.module.state_dict())
    train_state = None
    if state is not None:
        train_state = {k: v for k, v in state.items() if k != "model"}  # the weights are the checkpoint's own
    data, cfg = trainer.data, trainer.plan.cfg
    thresholds, notes = fit_for(cfg, scores) if cfg.task == MULTILABEL else (None, [])
    ckpt = make_checkpoint(
        model,
        model_name=cfg.model,
        classes=data.source.classes,
        preprocess=data.preprocess.to_dict(),
        config=cfg.to_dict(),
        metrics=metrics,
        data_fingerprint=data.fingerprint,
        epoch=trainer.state.epoch,
        train_state=train_state,
        **task_fields(cfg, thresholds),
    )
    ckpt["weights"] = weights
    if cfg.task == MULTILABEL:
        ckpt["threshold_goal"], ckpt["threshold_notes"] = cfg.threshold, notes
    return ckpt


def task_fields(cfg, thresholds: list[float] | None) -> dict:
    """make_checkpoint's task and thresholds: none for a single-label run (its checkpoint is written as before)."""
    return {"task": MULTILABEL, "thresholds": thresholds} if cfg.task == MULTILABEL else {}


def with_part_state(model: nn.Module, part: nn.Module, part_state: dict) -> nn.Module:
    """A copy of `model` whose submodule `part` (or the model itself) has the weights `part_state`."""
    out = copy.deepcopy(model)
    prefix = "" if part is model else next(n for n, m in model.named_modules() if m is part) + "."
    out.load_state_dict({**model.state_dict(), **{prefix + k: v for k, v in part_state.items()}})
    return out
