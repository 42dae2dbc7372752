"""The callbacks the training loop is built from: time budget, lookahead, early stopping, freeze-then-unfreeze,
histograms. The hooks and what a callback may touch are `imgclf.core.callback.Callback`'s."""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from imgclf.core.callback import Callback
from imgclf.core.errors import TrainingDiverged

log = logging.getLogger(__name__)


class TimeBudget(Callback):
    """--time-budget: after a few steps, how many optimisation steps fit in the minutes left; the schedule is
    shortened to end there.

    The first step is not timed (warm-up). Validation after each epoch is charged too: its images, at the
    training step's cost per image divided by 3 (forward only), times the model's evaluation views (test-time
    augmentation), plus `val_extra` training images' worth of other per-epoch validation (--adv-train's attacks)."""

    name = "time_budget"
    PROBE = 6

    def __init__(self, minutes: float, batch_size: int, eval_views: int = 1, val_extra: float = 0.0):
        self.seconds, self.batch_images, self.eval_views = minutes * 60.0, batch_size, eval_views
        self.val_extra = val_extra
        self.t0 = self.t1 = self.rate = None
        self.total, self.first = None, None

    def on_fit_start(self, trainer) -> None:
        self.t0, self.first = time.perf_counter(), trainer.state.step

    def on_step_end(self, trainer) -> None:
        if self.total is not None:
            return
        fixed = self.observe(
            trainer.state.step - self.first, val_images=trainer.val_images, per_epoch=trainer.per_epoch
        )
        if fixed is not None:
            trainer.set_total_steps(min(trainer.total_steps, self.first + fixed))
            trainer.info(
                "time budget %.1f min: %d optimisation steps (%.2f epochs) at %.0f images/s",
                self.seconds / 60,
                trainer.total_steps,
                trainer.total_steps / trainer.per_epoch,
                self.rate * self.batch_images,
            )

    def observe(self, done: int, *, val_images: int, per_epoch: int) -> int | None:
        """`done` steps taken in this session: None while still measuring, then the steps that fit in all."""
        now = time.perf_counter()
        if done == 1:
            self.t1 = now
            return None
        if done < 1 + self.PROBE:
            return None
        self.rate = (done - 1) / (now - self.t1)  # steps per second
        left = self.seconds - (now - self.t0)
        steps = done + max(0, int(left * self.rate))  # the time there is, in training steps
        # one validation after each epoch begun: forward only (~1/3 of a training step per image), times the
        # evaluation views, plus the extra (--adv-train's attacks), in training steps
        val = (val_images * self.eval_views / 3 + self.val_extra) / max(1, self.batch_images)
        # the most training steps that fit with their validations: for each number of epochs, as many steps as
        # fit beside that many validations, if that is more steps than one epoch fewer would hold
        self.total = done
        for epochs in range(1, -(-steps // per_epoch) + 1):
            fit = min(epochs * per_epoch, int(steps - epochs * val))
            if fit > (epochs - 1) * per_epoch:
                self.total = max(self.total, fit)
        return self.total


class Lookahead(Callback):
    """airbench's lookahead: every `every` steps the weights move into a running average whose decay rises
    from 0 to 0.95**5 as (step / total)**3, and the model continues from that average; at the end the model
    is the average. Floating-point state (weights and BatchNorm statistics) only."""

    name = "lookahead"

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


MONITOR_MODE = {"val_loss": "min", "val_acc": "max", "val_macro_f1": "max", "val_robust_acc": "max"}


def improves(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if MONITOR_MODE[monitor] == "min" else value > best


class EarlyStopping(Callback):
    """--patience N: stop when the monitored metric (of the model or its EMA, whichever is better) has not
    improved for N epochs in a row."""

    name = "early_stopping"

    def __init__(self, patience: int, monitor: str):
        self.patience, self.monitor = patience, monitor
        self.best, self.bad_epochs = None, 0

    def on_validation_end(self, trainer, row: dict) -> None:
        value = trainer.monitored(row)
        if improves(value, self.best, self.monitor):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.stop(
                f"early stopping: {self.monitor} has not improved on {self.best:.4f} for {self.patience} "
                f"epoch{'s' * (self.patience != 1)} (--patience {self.patience})"
            )

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])


class FreezeThenUnfreeze(Callback):
    """--freeze-epochs N (fastai's `fine_tune`): the first N epochs train only the new head, the backbone
    frozen (its BatchNorm statistics too); from epoch N+1 every layer trains, the pretrained ones at
    --backbone-lr-scale times the learning rate (their optimizer group is set up from the start)."""

    name = "freeze_then_unfreeze"

    def __init__(self, epochs: int, frozen: list[str]):
        self.epochs, self.frozen = epochs, list(frozen)

    def on_epoch_start(self, trainer) -> None:
        frozen_now = trainer.state.epoch < self.epochs  # state.epoch: epochs completed before this one
        for name, p in trainer.state.model.named_parameters():
            if any(name == f or name.startswith(f + ".") for f in self.frozen):
                p.requires_grad_(not frozen_now)
        trainer.frozen = self.frozen if frozen_now else []
        if trainer.state.epoch == self.epochs and self.epochs > 0:
            trainer.info("epoch %d: the backbone is unfrozen; every layer trains from here", trainer.state.epoch + 1)


class Histograms(Callback):
    """--log-histograms N: every N steps, per-layer histograms and norms of gradients and activations in
    TensorBoard; at every step, a non-finite loss or gradient, or a gradient norm over EXPLODE times the median
    of the last WINDOW steps, stops the run with one line naming the step and the layer."""

    name = "histograms"
    EXPLODE, WINDOW, MIN_HISTORY = 100.0, 50, 10

    def __init__(self, every: int):
        self.every, self.norms, self.hooks, self.acts = every, [], [], {}

    def _due(self, trainer) -> bool:
        return (trainer.state.step + 1) % self.every == 0

    def on_step_start(self, trainer) -> None:
        if not self._due(trainer):
            return
        for name, m in trainer.step_model.named_children():
            self.hooks.append(m.register_forward_hook(self._keep(name)))

    def _keep(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.acts[name] = output.detach().float().cpu()

        return hook

    def on_after_backward(self, trainer) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        step = trainer.state.step + 1
        loss = float(trainer.loss.detach())
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"step {step}: the loss is {loss}; stopped at the last good checkpoint (lower --lr, or add --clip-grad)"
            )
        grads = {n: p.grad for n, p in trainer.step_model.named_parameters() if p.grad is not None}
        norms = {n: float(g.detach().float().norm()) for n, g in grads.items()}
        total = math.sqrt(sum(v * v for v in norms.values()))
        self._check(step, total, norms)
        if self._due(trainer):
            self._write(trainer.writer, step, grads, norms, total)

    def _check(self, step: int, total: float, norms: dict) -> None:
        worst = max(norms, key=lambda n: norms[n] if math.isfinite(norms[n]) else math.inf, default="?")
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"step {step}: non-finite gradient in layer {worst}; stopped at the last good "
                "checkpoint (lower --lr, or add --clip-grad)"
            )
        history = sorted(self.norms[-self.WINDOW :])
        if len(history) >= self.MIN_HISTORY and total > self.EXPLODE * history[len(history) // 2]:
            raise TrainingDiverged(
                f"step {step}: the gradient norm exploded to {total:.3g} ({total / history[len(history) // 2]:.0f}x "
                f"the median of the last {len(history)} steps), largest in layer {worst}; stopped at "
                "the last good checkpoint (lower --lr, or add --clip-grad)"
            )
        self.norms.append(total)

    def _write(self, writer, step: int, grads: dict, norms: dict, total: float) -> None:
        writer.add_scalar("grad_norm/total", total, step)
        for n, g in grads.items():
            writer.add_histogram(f"grad/{n}", g.detach().float().cpu(), step)
            writer.add_scalar(f"grad_norm/{n}", norms[n], step)
        for n, a in self.acts.items():
            writer.add_histogram(f"activation/{n}", a, step)
            writer.add_scalar(f"activation_norm/{n}", float(a.norm()), step)
        self.acts = {}

    def state_dict(self) -> dict:
        return {"norms": self.norms[-self.WINDOW :]}

    def load_state_dict(self, state: dict) -> None:
        self.norms = list(state["norms"])
