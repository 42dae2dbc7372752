"""Averages of the weights: the EMA (--ema) and airbench's lookahead (--lookahead)."""

from __future__ import annotations

import torch
from torch import nn

from imgclf.core.callback import Callback
from imgclf.training.validate import validation_columns


class EMA(Callback):
    """--ema: the moving average of the weights (TrainState.ema, training/build.py make_ema) takes each step's
    weights, and is validated beside the model after each epoch (the ema_val_* columns); best.pt then holds
    whichever is better by --monitor (training/callbacks/checkpoint.py). Its state is the TrainState's own."""

    order = 5  # the first at on_step_end: it averages the step's weights before lookahead moves them

    def on_step_end(self, trainer) -> None:
        trainer.state.ema.update_parameters(trainer.step_model)

    def on_validate(self, trainer, row: dict) -> None:
        row |= validation_columns(
            trainer.state.ema.module,
            trainer.eval_feed,
            trainer.plan,
            trainer.data.source.classes,
            desc="validate EMA",
            prefix="ema_",
            keep=trainer.val_scores,
        )


class Lookahead(Callback):
    """airbench's lookahead: every `every` steps the weights move into a running average whose decay rises
    from 0 to 0.95**5 as (step / total)**3, and the model continues from that average; at the end the model
    is the average. Floating-point state (weights and BatchNorm statistics) only."""

    order = 40
    state_key = "lookahead"

    def __init__(self, model: nn.Module, every: int = 5):
        self.every = every
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def on_step_end(self, trainer) -> None:
        self.update(trainer.step_model, trainer.state.step, trainer.total_steps)

    def on_train_epoch_end(self, trainer) -> None:
        if trainer.state.step >= trainer.total_steps:
            self.merge(trainer.step_model, 1.0)  # the final model is the lookahead average

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, total: int) -> None:
        if step % self.every:
            return
        self.merge(model, 0.95**5 * min(1.0, step / max(1, total)) ** 3)

    @torch.no_grad()
    def merge(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, a in self.avg.items():
            a.lerp_(state[k], 1 - decay)
            state[k].copy_(a)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.avg.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.avg[k].copy_(v)
