"""A run's state: `TrainState`, everything a run needs to continue exactly where it stopped, and `build_state`,
which makes it for a decided plan (optimizer, schedule, gradient scaler, EMA; a resumed run's state loaded).

A checkpoint is `TrainState.state_dict()` (plain types and tensors: checkpoints load with weights_only=True) beside
the artifact's description (models/checkpoint.py); `--resume` is `load_state_dict()`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from imgclf.models.checkpoint import load_weights
from imgclf.training.build import StepSchedule, make_ema, make_optimizer, make_scheduler, param_groups
from imgclf.training.features import head_of
from imgclf.training.plan import RunData, RunPlan

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped; `state_dict()` holds only plain types and
    tensors. `step_schedule` and `callbacks` are the set-up's, not saved: the per-step schedule whose length the
    Trainer sets, and the callbacks whose states are saved with the rest (under their `state_key`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None = None
    precision: str = "fp32"
    step_schedule: StepSchedule | None = None
    # where the run is: a new state starts at nothing, load_state_dict() puts a saved one back
    step: int = field(default=0, init=False)  # optimisation steps taken
    epoch: int = field(default=0, init=False)  # epochs completed
    best: dict = field(default_factory=lambda: {"value": None, "epoch": 0, "weights": "model"}, init=False)
    rows: list[dict] = field(default_factory=list, init=False)
    world_size: int = field(default=1, init=False)  # the ranks it trains on (after a resume: until build_state's)
    callbacks: list = field(default_factory=list, init=False)  # attach() sets them
    saved_callbacks: dict = field(default_factory=dict, init=False)  # saved states not yet taken back
    # a run stopped inside an epoch: where (training/preempt.py Position.to_dict()); None at an epoch's end
    position: dict | None = field(default=None, init=False)

    def state_dict(self) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "precision": self.precision,
            "step": self.step,
            "epoch": self.epoch,
            "best": dict(self.best),
            "rows": [dict(r) for r in self.rows],
            "world_size": self.world_size,
            "callbacks": {cb.state_key: s for cb in self.callbacks if (s := cb.state_dict()) is not None},
            "rng": {"torch": torch.get_rng_state()},
        } | ({"position": self.position} if self.position is not None else {})

    def load_state_dict(self, state: dict) -> None:
        if "model" in state:  # a checkpoint keeps the weights beside the training state, at its top level
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            # creating the scheduler set each group's lr to its starting value: back to where the run was
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.precision, self.step, self.epoch = state["precision"], int(state["step"]), int(state["epoch"])
        self.best, self.rows = dict(state["best"]), [dict(r) for r in state["rows"]]
        self.world_size = int(state.get("world_size", 1))
        self.saved_callbacks = dict(state.get("callbacks") or {})
        self.position = state.get("position")
        self.attach(self.callbacks)
        torch.set_rng_state(state["rng"]["torch"])

    def attach(self, callbacks) -> None:
        """The callbacks whose states this state saves; each takes back its saved state, if it has one."""
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if cb.state_key in self.saved_callbacks:
                cb.load_state_dict(self.saved_callbacks.pop(cb.state_key))


def trained_part(plan: RunPlan, model: nn.Module) -> nn.Module:
    """What trains, so what lookahead and the EMA average: the head alone on the frozen-feature cache."""
    return head_of(model, plan.cfg.model) if plan.feature_cache else model


def build_state(plan: RunPlan, data: RunData, model: nn.Module) -> TrainState:
    """The TrainState of a decided plan, on `model` (the one `decide` built and froze): a new run's, or the state
    a resumed run saved."""
    cfg = plan.cfg
    if plan.world.distributed and cfg.sync_bn:  # before the optimizer: the converted layers keep the parameters
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    later = list(plan.frozen) if cfg.freeze_epochs else []  # frozen at first, in the optimizer from the start
    optimizer = make_optimizer(cfg, param_groups(cfg, model, plan.spec, later))
    scheduler, schedule = make_scheduler(cfg, optimizer, plan.total_steps)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(plan.device.type, enabled=plan.precision == "fp16"),
        ema=make_ema(trained_part(plan, model), cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None,
        precision=plan.precision,
        step_schedule=schedule,
    )
    if plan.resumed:
        resume(state, plan)
    state.world_size = plan.world.size
    if schedule is not None:  # after the resumed scheduler's own (its state holds the schedule's length)
        schedule.total = plan.total_steps
    return state


def resume(state: TrainState, plan: RunPlan) -> None:
    """Load the checkpoint `plan` resumes into `state`: weights, optimizer, schedule, step, epoch, best, rows."""
    load_weights(state.model, plan.resume, plan.cfg.resume)  # one line on a mismatch, not a state-dict dump
    state.load_state_dict(dict(plan.resume["train_state"]))
    if state.epoch > 0 and not os.path.exists(os.path.join(plan.run_path, "best.pt")):  # (inside epoch 1: none yet)
        log.warning(
            "no best.pt beside '%s': the best epoch is chosen again from the epochs still to run", plan.cfg.resume
        )
        state.best = {"value": None, "epoch": 0, "weights": "model"}
