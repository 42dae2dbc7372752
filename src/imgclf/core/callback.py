"""The callback contract: the hooks of the training loop, what a callback may read and change, its `order` and
its `state_key`. (Torch-free, so that a model family can ship its own callbacks: models/airnet.py.)

A callback subclasses `Callback`, whose hooks do nothing, and overrides the ones it needs. The Trainer
(imgclf.training.trainer) calls a hook on every callback in `order`, lowest first (equal orders in the order the
callbacks were registered: the built-in ones, the model's own, then those passed to `train(callbacks=...)`):

    on_fit_start        once, before the first epoch (after a resume too: `trainer.state.epoch` says where)
    on_epoch_start      before each epoch's steps: the model in train mode, the epoch's seeds set
    on_step_start       before each optimisation step's first forward pass
    on_batch            each training batch as the feed gives it, on the CPU: returns (x, y), e.g. mixed
    on_device_batch     each training batch on the device, before the forward pass that trains: returns x
    on_after_backward   the step's gradients ready, not yet clipped or applied; `trainer.loss` is its loss
    on_step_end         after the optimizer step and the per-step schedule; `trainer.state.step` counts the steps
    on_train_epoch_end  after the epoch's last step, before validation
    on_validate         with the epoch's row after the model's own validation columns: add yours to it
    on_validation_end   with the epoch's complete row, once `state.epoch` and `state.rows` have it
    on_fit_end          after the last epoch

`Run` below is what a callback sees of the Trainer: the members it may read, the few it may change, and three
calls. Through `trainer.state` it may also change the model's weights and `requires_grad` flags and the
optimizer's learning rates; nothing else of the Trainer is part of the contract.

A callback whose state a resumed run needs returns it from `state_dict()` (plain types and tensors) and takes it
back in `load_state_dict()`; the checkpoint keeps it under `state_key`, the class name unless the class sets
another (or, for a callback written before `state_key` existed, its `name`). Two callbacks with one key are
refused (`arrange`), so one can never overwrite the other's state.

The built-in callbacks and their orders are listed in imgclf.training.callbacks (and in `train()`'s docstring).
"""

from __future__ import annotations

from typing import Any, Protocol

from imgclf.core.errors import UsageError

DEFAULT_ORDER = 100  # a callback's place among the built-in ones: after those that shape a step, before the bookkeeping


class Run(Protocol):
    """The Trainer as a callback sees it (duck-typed: the types live in imgclf.training)."""

    # read
    plan: Any  # RunPlan: cfg (the options), spec, device, amp, world, run_path, total_steps, per_epoch, ...
    state: Any  # TrainState: model, optimizer, scheduler, ema, step (steps done), epoch (epochs done), best, rows
    data: Any  # RunData: source (classes, splits), preprocess, the train and val image feeds, left_out
    run_dir: Any  # RunDir: info, warning, say, file(name), writer (TensorBoard)
    total_steps: int  # the optimisation steps the run takes in all (set_total_steps sets it: --time-budget)
    per_epoch: int  # optimisation steps per epoch (this rank's)
    started: float  # time.perf_counter() when fit() began
    setup_seconds: float  # from opening the data to the end of on_fit_start
    loss: Any  # the step's loss (a tensor), from on_after_backward on
    aug: Any  # this epoch's augmentation generator (torch.Generator; one per rank under torchrun)
    stop_reason: str | None  # why the run stops early, once a callback said so
    # may change
    step_model: Any  # the module that trains and is validated (the frozen-feature cache sets the head)
    train_feed: Any  # what the epochs draw their batches from (the frozen-feature cache sets its own)
    eval_feed: Any  # what validation reads
    paced: Any  # this epoch's curriculum (an object with `draw(u)`: data/batches.py), or None: a permutation
    results: dict  # what fit() returns and results.json holds: add keys of your own; the run's own keys win
    criterion: Any  # the step's loss, criterion(out, targets): wrapped in on_fit_start (--teacher's Distillation)

    def info(self, msg: str, *args) -> None:
        """A line of the run's story: train.log and the log."""

    def stop(self, reason: str) -> None:
        """End the run after this epoch (it is still validated and saved); the reason goes to the log and
        results.json."""

    def set_total_steps(self, total: int, *, fill: bool = False) -> None:
        """Set the run to `total` steps (--time-budget): rank 0's number on every rank, the per-step schedule
        ends there and config.yaml says so; `fill`: the epochs follow (the budget planned them), so the run may
        also grow."""


class Callback:
    """A callback: every hook does nothing until a subclass overrides it. `order` and `state_key` are class
    attributes."""

    order: int = DEFAULT_ORDER

    @property
    def state_key(self) -> str:
        # A class that still sets `name` (the key callbacks saved under before `state_key`) keeps it, so that its
        # state in an older last.pt is found again on resume.
        return getattr(type(self), "name", None) or type(self).__name__

    def on_fit_start(self, trainer: Run) -> None: ...
    def on_epoch_start(self, trainer: Run) -> None: ...
    def on_step_start(self, trainer: Run) -> None: ...

    def on_batch(self, trainer: Run, x, y):
        return x, y

    def on_device_batch(self, trainer: Run, x, y):
        return x

    def on_after_backward(self, trainer: Run) -> None: ...
    def on_step_end(self, trainer: Run) -> None: ...
    def on_train_epoch_end(self, trainer: Run) -> None: ...
    def on_validate(self, trainer: Run, row: dict) -> None: ...
    def on_validation_end(self, trainer: Run, row: dict) -> None: ...
    def on_fit_end(self, trainer: Run) -> None: ...

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


def arrange(callbacks) -> list[Callback]:
    """`callbacks` in the order their hooks run: by `order`, equal orders as given. A state key used twice is
    refused: in last.pt one state would overwrite the other."""
    callbacks, seen = list(callbacks), {}
    for cb in callbacks:
        key = cb.state_key
        if key in seen:
            raise UsageError(
                f"two callbacks have the state key '{key}' ({type(seen[key]).__name__} and {type(cb).__name__}): "
                "give one of them a `state_key` of its own (a class attribute), so that checkpoints keep both"
            )
        seen[key] = cb
    return sorted(callbacks, key=lambda cb: cb.order)  # a stable sort: ties keep their registration order
