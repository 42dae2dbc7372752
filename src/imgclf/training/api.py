"""Training: `train()` sets a run up (options, data, model, state) and hands it to a `Trainer`.

    Trainer(cfg, state, run_dir, ...).fit():
        for each epoch:   callbacks.on_epoch_start -> train_one_epoch -> evaluate -> save
    TrainState:           model, optimizer, scheduler, scaler, EMA, step, epoch, best, rows, callbacks' states
    RunDir (rundir.py):   everything the run writes
    callbacks.py:         the named hooks, and time budget, lookahead, early stopping, freeze-then-unfreeze,
                          histograms; a model's own (airnet's whitening) come from its registry entry

Exact resume: every source of randomness in epoch E (shuffle order, augmentation, dropout, worker seeds) is
drawn from generators seeded with (seed, E) at the start of that epoch, and last.pt holds `TrainState` after E.
So a run resumed after epoch E repeats, bit for bit on the same machine, what an uninterrupted run would have
done.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from imgclf.compute import distributed
from imgclf.compute.device import autocast, resolve_device, to_layout, training_precision
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError, DataError, RankLost, TrainingDiverged, UsageError
from imgclf.core.options import check_output_folder
from imgclf.core.progress import progress
from imgclf.data.balance import choose_balance, class_weights, sample_weights
from imgclf.data.feed import FastFeed, make_feed
from imgclf.data.mixing import make_mixer
from imgclf.data.pipeline import common_size, default_workers, resolve_preprocess
from imgclf.data.sources import open_source, write_split_manifest
from imgclf.evaluation.command import write_eval_plots
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import infer, infer_sharded
from imgclf.models.checkpoint import load_checkpoint, load_weights, make_checkpoint
from imgclf.models.registry import (
    apply_frozen_eval,
    build_model,
    format_parameter_table,
    freeze,
    get_spec,
    parameter_table,
)
from imgclf.training.callbacks import EarlyStopping, FreezeThenUnfreeze, Histograms, Lookahead, TimeBudget, improves
from imgclf.training.features import build_feature_feeds, head_of
from imgclf.training.options import TrainConfig, check_config, make_config
from imgclf.training.rundir import RunDir, new_run_path

log = logging.getLogger(__name__)

# What a resumed run may change: its length and the machinery it runs on, never its recipe.
RESUME_OVERRIDES = ("epochs", "device", "workers", "cache", "log_every", "patience", "dist_timeout")


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def rank_seed(seed: int, rank: int) -> int:
    """A seed per rank from an epoch's seed (rank 0's is the seed itself, so one process draws as before)."""
    return (seed + rank * 0x9E3779B97F4A7C15) % (2**63)


class StepSchedule:
    """warmup-linear, per optimisation step: 0.2x -> 1x over the first 23% of steps, then linearly down to 0.07x
    at the last (airbench94's schedule). `total` may be set after the first steps (by --time-budget)."""

    def __init__(self, total: int):
        self.total = max(1, int(total))

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.total * 0.23))
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 + (0.07 - 1.0) * min(1.0, (step - warm) / max(1, self.total - warm))


def make_ema(model: nn.Module, decay: float, warmup: int) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and buffers (torch's AveragedModel); during the first
    `warmup` updates the decay rises linearly from 0, so the average soon forgets the random start."""

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        d = decay * min(1.0, float(n_averaged) / warmup) if warmup else decay
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BatchNorm's batch counter): the model's own value
            for a, c in zip(averaged, current):
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped; `state_dict()` holds only plain types and
    tensors (checkpoints load with weights_only=True)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None = None
    precision: str = "fp32"
    step: int = 0  # optimisation steps taken
    epoch: int = 0  # epochs completed
    best: dict = field(default_factory=lambda: {"value": None, "epoch": 0, "weights": "model"})
    rows: list[dict] = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    world_size: int = 1  # the ranks the run trains on (after a resume: until the Trainer sets the new one)

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
            "callbacks": {cb.name: s for cb in self.callbacks if (s := cb.state_dict()) is not None},
            "rng": {"torch": torch.get_rng_state()},
        }

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
        saved = state.get("callbacks") or {}
        for cb in self.callbacks:
            if cb.name in saved:
                cb.load_state_dict(saved[cb.name])
        torch.set_rng_state(state["rng"]["torch"])


def train_steps(
    model,
    batches,
    criterion,
    opt,
    scaler,
    device,
    amp,
    *,
    channels_last: bool = True,
    max_steps: int | None = None,
    desc: str = "train",
    log_every: int | None = None,
    accumulate: int = 1,
    clip_grad: float | None = None,
    mix=None,
    hooks=None,
    perturb=None,
):
    """Optimisation steps over `batches` (each step sums the gradients of `accumulate` batches); returns (summed
    loss, correct, images seen). `hooks` (the Trainer) gets on_step_start, on_after_backward and on_step_end
    (which returns True to end the pass); `mix(x, y) -> (x, soft targets)` is mixup/cutmix; `perturb(x, y) -> x`
    the adversarial training's attack (adversarial.py). The Trainer and the benchmarks both call this, so a benchmark
    measures the code that trains."""
    loss_sum, correct, seen = 0.0, 0, 0
    n_batches = len(batches)
    total = n_batches if max_steps is None else min(n_batches, max_steps * accumulate)
    status = lambda: f"loss {loss_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.4f}"  # noqa: E731
    for i, (x, y) in enumerate(
        progress(batches, total=total, desc=desc, unit="batch", log_every=log_every, postfix=status)
    ):
        if i >= total:
            break
        group = min(accumulate, n_batches - (i - i % accumulate))  # batches summed into this step
        if i % accumulate == 0:
            opt.zero_grad(set_to_none=True)
            if hooks is not None:
                hooks.on_step_start()
        if mix is not None:
            x, y = mix(x, y)
        x, y = to_layout(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
        if perturb is not None:
            x = perturb(x, y)
        with autocast(device, amp):
            out = model(x)
            loss = criterion(out, y)
        scaler.scale(loss if group == 1 else loss / group).backward()
        n = y.size(0)
        loss_sum += float(loss.detach()) * n
        correct += int((out.argmax(1) == (y if y.dim() == 1 else y.argmax(1))).sum())
        seen += n
        if (i + 1) % accumulate and i + 1 < n_batches:
            continue
        if hooks is not None:
            hooks.on_after_backward(loss)
        if clip_grad is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_grad)
        scaler.step(opt)
        scaler.update()
        if hooks is not None and hooks.on_step_end():
            break
    return loss_sum, correct, seen


class Trainer:
    """Runs `fit()` on a TrainState: the epoch loop, validation, checkpoints and logs, with callbacks at the
    named hooks (callbacks.py). Build one with `train()`, which resolves the options and the data first."""

    def __init__(
        self,
        cfg: TrainConfig,
        state: TrainState,
        run_dir: RunDir,
        *,
        src,
        prep: Preprocess,
        feeds: dict,
        device: torch.device,
        amp,
        frozen: list[str],
        left_out: list,
        setup_seconds: float,
        resumed: bool,
        step_schedule: StepSchedule | None = None,
        world: distributed.World | None = None,
    ):
        self.world = world or distributed.World()
        self.cfg, self.state, self.run_dir, self.src, self.prep = cfg, state, run_dir, src, prep
        self.train_feed, self.val_feed = feeds["train"], feeds["val"]
        self.epoch_feed, self.eval_feed, self.step_model = self.train_feed, self.val_feed, state.model
        self.device, self.amp, self.frozen, self.left_out = device, amp, frozen, left_out
        self.setup_seconds, self.resumed = setup_seconds, resumed
        self.balance, self.balance_reason = choose_balance(cfg.balance, self.train_feed.split.labels)
        n_cls = len(src.classes)
        weight = class_weights(self.train_feed.split.labels, n_cls).to(device) if self.balance == "weights" else None
        self.sampler_weights = (
            sample_weights(self.train_feed.split.labels, n_cls) if self.balance == "sampler" else None
        )
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.mixer = make_mixer(cfg, n_cls)
        self.lr_find = None  # the range test's result when --lr auto ran it
        shard = (self.world.rank, self.world.size) if self.world.distributed else None
        steps = len(self.train_feed.epoch(torch.Generator().manual_seed(0), shard=shard))  # this rank's batches
        self.per_epoch = -(-steps // cfg.accumulate)
        self.total_steps = min(cfg.max_steps or cfg.epochs * self.per_epoch, cfg.epochs * self.per_epoch)
        self.world_changed = resumed and state.world_size != self.world.size
        if self.world_changed and not cfg.max_steps:
            # resumed on another number of ranks: an epoch is another number of steps; the epochs still to run
            # take the steps they now take, and a per-step schedule is stretched or shrunk to end there
            self.total_steps = state.step + (cfg.epochs - state.epoch) * self.per_epoch
        state.world_size = self.world.size
        self.schedule = step_schedule  # the per-step schedule's length, which --time-budget may shorten
        if self.schedule is not None:
            self.schedule.total = self.total_steps
        self.stop_reason, self.loss, self.compiled = None, None, None
        self.train_model, self._trains = self.step_model, None  # DistributedDataParallel's wrapper under torchrun
        self.paced = None  # this epoch's curriculum (curriculum.Curriculum sets it while the pool is growing)
        self.perturb, self.robust_subset = self._adversarial()
        self.fingerprint = src.fingerprint()

    # ---------------------------------------------------------------- what callbacks use
    @property
    def writer(self):
        return self.run_dir.writer

    @property
    def val_images(self) -> int:
        return len(self.eval_feed)

    def info(self, msg: str, *args) -> None:
        self.run_dir.info(msg, *args)

    def stop(self, reason: str) -> None:
        """End the run after this epoch (it is still validated and saved)."""
        self.stop_reason = self.stop_reason or reason

    def set_total_steps(self, total: int) -> None:
        """Shorten the run (--time-budget): the per-step schedule ends there, and config.yaml says so."""
        total = distributed.broadcast(total, self.world)  # rank 0's measurement, so every rank stops together
        self.total_steps = total
        if self.schedule is not None:
            self.schedule.total = total
        self.cfg = self.cfg.resolved(max_steps=total)
        self.run_dir.write_config(self.cfg.to_dict())

    def monitored(self, row: dict) -> float:
        """The --monitor metric of this epoch: of the model, or of its EMA when that is better."""
        key = self.cfg.monitor
        ema = row.get("ema_" + key)
        return ema if ema is not None and improves(ema, row[key], key) else row[key]

    def _call(self, hook: str, *args) -> None:
        for cb in self.state.callbacks:
            getattr(cb, hook)(self, *args)

    # ---------------------------------------------------------------- hooks train_steps calls
    def on_step_start(self) -> None:
        self._call("on_step_start")

    def on_after_backward(self, loss) -> None:
        self.loss = loss
        self._call("on_after_backward")

    def on_step_end(self) -> bool:
        st = self.state
        st.step += 1
        if self.schedule is not None:
            st.scheduler.step()
        if st.ema is not None:
            st.ema.update_parameters(self.step_model)
        self._call("on_step_end")
        return st.step >= self.total_steps

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        t_fit = time.perf_counter()  # --time-budget counts from here: the epoch loop and what it needs first
        self._begin()
        try:
            while self.state.epoch < self.cfg.epochs and self.state.step < self.total_steps and not self.stop_reason:
                t0 = time.perf_counter()
                lr = self._start_epoch()
                train_loss, train_acc = self.train_one_epoch()
                self._call("on_train_epoch_end")
                if self.state.scheduler is not None and self.schedule is None:
                    self.state.scheduler.step()  # per-epoch schedules
                row = {
                    "epoch": self.state.epoch + 1,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    **self.evaluate(),
                    "lr": lr,
                    "seconds": time.perf_counter() - t0,
                }
                self.state.epoch += 1
                self.state.rows.append(row)
                self._call("on_validation_end", row)
                self.save(row)
        except TrainingDiverged as e:  # the caller reports it; train.log keeps it with the run
            self.run_dir.say(logging.ERROR, "%s", e, echo=False)
            raise
        except Exception as e:
            if not (self.world.distributed and distributed.lost_peer(e)):
                raise
            import re

            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo's "[file:line] what. hint"
            raise RankLost(
                f"rank {self.world.rank}: another rank stopped answering ({first[:160]}); the run stopped after "
                f"epoch {self.state.epoch}: continue it with --resume {os.path.join(self.run_dir.path, 'last.pt')}"
            ) from e
        self._call("on_fit_end")
        return self._finish(time.perf_counter() - t_fit)

    def _start_epoch(self) -> float:
        seed = epoch_seed(self.cfg.seed, self.state.epoch + 1)
        own = rank_seed(seed, self.world.rank)
        torch.manual_seed(own)  # dropout and, with workers=0, augmentation
        self.gen = torch.Generator().manual_seed(seed)  # the order: the same on every rank, which takes its shard
        # augmentation and worker seeds: one generator per rank under torchrun, else the order's
        self.aug = torch.Generator().manual_seed(own) if self.world.distributed else self.gen
        if self.perturb is not None:  # the attack's random starts: per epoch and rank, so a resume draws them again
            self.perturb.generator = torch.Generator().manual_seed((own * 31 + 17) % 2**63)
        self.state.model.train()
        self._call("on_epoch_start")
        apply_frozen_eval(self.state.model, self.frozen)
        self._wrap()
        return self.state.optimizer.param_groups[0]["lr"]

    def train_one_epoch(self) -> tuple[float, float]:
        cfg, st = self.cfg, self.state
        budget_known = not any(isinstance(cb, TimeBudget) and cb.total is None for cb in st.callbacks)
        desc = f"epoch {st.epoch + 1}" + (f"/{-(-self.total_steps // self.per_epoch)}" if budget_known else "")
        t = time.perf_counter()
        shard = (self.world.rank, self.world.size) if self.world.distributed else None
        loss_sum, correct, seen = train_steps(
            self.train_model if self.compiled is None else self.compiled,
            self.epoch_feed.epoch(
                self.gen, self.sampler_weights, shard=shard, aug=self.aug if shard else None, paced=self.paced
            ),
            self.criterion,
            st.optimizer,
            st.scaler,
            self.device,
            self.amp,
            channels_last=cfg.channels_last,
            desc=desc,
            log_every=cfg.log_every,
            accumulate=cfg.accumulate,
            clip_grad=cfg.clip_grad,
            hooks=self,
            mix=None if self.mixer is None else (lambda x, y: self.mixer(x, y, self.aug)),
            max_steps=self.total_steps - st.step,
            perturb=self.perturb,
        )
        if self.compiled is not None and st.epoch + 1 == self.first_epoch:
            self.info("torch.compile: the first epoch took %.1f s, compilation included", time.perf_counter() - t)
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def evaluate(self) -> dict:
        """Validation metrics of the model (and of its EMA) in the row's column names."""
        amp = self.amp
        logits, labels = infer_sharded(
            self.step_model,
            self.eval_feed,
            self.device,
            amp,
            world=self.world,
            desc="validate",
            channels_last=self.cfg.channels_last,
        )
        vm = compute_metrics(logits, labels, self.src.classes)
        row = {"val_loss": vm["loss"], "val_acc": vm["accuracy"], "val_macro_f1": vm["macro_f1"]}
        if self.state.ema is not None:
            logits, labels = infer_sharded(
                self.state.ema.module,
                self.eval_feed,
                self.device,
                amp,
                world=self.world,
                desc="validate EMA",
                channels_last=self.cfg.channels_last,
            )
            em = compute_metrics(logits, labels, self.src.classes)
            row |= {"ema_val_loss": em["loss"], "ema_val_acc": em["accuracy"], "ema_val_macro_f1": em["macro_f1"]}
        if self.robust_subset is not None:
            row["val_robust_acc"] = self.robust_accuracy()
        return row

    def robust_accuracy(self) -> float:
        """PGD-10 accuracy at --adv-eps on the seeded subset of validation images (adversarial.py)."""
        from imgclf.core.options import adv_eps
        from imgclf.training.adversarial import robust_correct

        correct, seen = robust_correct(
            self.step_model,
            self.eval_feed,
            self.robust_subset,
            adv_eps(self.cfg.adv_eps),
            mean=self.prep.mean,
            std=self.prep.std,
            channels_last=self.cfg.channels_last,
            device=self.device,
            amp=self.amp,
            world=self.world,
        )
        return correct / max(1, seen)

    def _adversarial(self):
        """(the training batches' attack, the validation images attacked after each epoch), for --adv-train."""
        if self.cfg.adv_train == "none":
            return None, None
        from imgclf.core.options import adv_eps, adv_step
        from imgclf.training.adversarial import Perturb, robust_subset

        cfg = self.cfg
        perturb = Perturb(
            self.step_model,
            cfg.adv_train,
            adv_eps(cfg.adv_eps),
            cfg.adv_steps,
            step_size=adv_step(cfg.adv_step),
            mean=self.prep.mean,
            std=self.prep.std,
            channels_last=cfg.channels_last,
            device=self.device,
            amp=self.amp,
        )
        subset = robust_subset(len(self.eval_feed), cfg.adv_val_images) if cfg.adv_val_images else None
        return perturb, subset

    def save(self, row: dict) -> None:
        """metrics.csv and TensorBoard, then best.pt (if this epoch is the best), epoch_N.pt, last.pt: last.pt is
        written last, so a kill before it means this epoch is simply redone on resume."""
        st, epoch = self.state, self.state.epoch
        value = self.monitored(row)
        improved = improves(value, st.best["value"], self.cfg.monitor)
        weights = "ema" if st.ema is not None and value != row[self.cfg.monitor] else "model"
        if improved:
            st.best = {"value": value, "epoch": epoch, "weights": weights}
        if not self.world.main:  # every rank has the same rows (the validation is gathered), so the same best
            return
        self.run_dir.log_epoch(st.rows)
        summary = {"accuracy": row["val_acc"], "loss": row["val_loss"], "macro_f1": row["val_macro_f1"]}
        if "val_robust_acc" in row:
            summary["robust_accuracy"] = row["val_robust_acc"]
        if improved:
            prefix = "ema_val_" if weights == "ema" else "val_"  # the metrics of the weights best.pt holds
            kept = {"accuracy": row[prefix + "acc"], "loss": row[prefix + "loss"], "macro_f1": row[prefix + "macro_f1"]}
            if weights == "model" and "val_robust_acc" in row:
                kept["robust_accuracy"] = row["val_robust_acc"]
            self.run_dir.save(self._checkpoint(kept, weights=weights), "best.pt")
        with_state = self._checkpoint(summary, state=st.state_dict())
        if self.cfg.save_every and epoch % self.cfg.save_every == 0:
            self.run_dir.save(with_state, f"epoch_{epoch}.pt")
        self.run_dir.save(with_state, "last.pt")
        ema = f"  ema_val_acc {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
        if "val_robust_acc" in row:
            ema += f"  val_robust_acc {row['val_robust_acc']:.4f}"
        self.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  lr %.3g  %.1fs%s",
            epoch,
            -(-self.total_steps // self.per_epoch),
            row["train_loss"],
            row["train_acc"],
            row["val_loss"],
            row["val_acc"],
            row["val_macro_f1"],
            ema,
            row["lr"],
            row["seconds"],
            f"  *best*{' (EMA)' if weights == 'ema' else ''}" if improved else "",
        )

    def _checkpoint(self, metrics: dict, *, state: dict | None = None, weights: str = "model") -> dict:
        model = self.state.model
        if weights == "ema":  # the whole model with the EMA's weights where it averages
            model = _with_part_state(model, self.step_model, self.state.ema.module.state_dict())
        train_state = None
        if state is not None:
            train_state = {k: v for k, v in state.items() if k != "model"}  # the weights are the checkpoint's own
        ckpt = make_checkpoint(
            model,
            model_name=self.cfg.model,
            classes=self.src.classes,
            preprocess=self.prep.to_dict(),
            config=self.cfg.to_dict(),
            metrics=metrics,
            data_fingerprint=self.fingerprint,
            epoch=self.state.epoch,
            train_state=train_state,
        )
        ckpt["weights"] = weights
        return ckpt

    # ---------------------------------------------------------------- before and after the loop
    def _begin(self) -> None:
        cfg, st = self.cfg, self.state
        self._describe()
        self.run_dir.write_config(cfg.to_dict())  # a resumed run may have a new --epochs or --patience
        if st.epoch > 0:
            self.run_dir.purge_after(st.epoch)
        self.run_dir.write_left_out(self.left_out)
        if self.src.val_origin == "carved" and not self.resumed:  # a resumed run keeps the split it started with
            write_split_manifest(self.src, self.run_dir.file("split.csv"))
        self._call("on_fit_start")
        if uses_feature_cache(cfg, self.train_feed):
            self._feature_cache()
        self.first_epoch = st.epoch + 1

    def _wrap(self) -> None:
        """Under torchrun the model trains inside DistributedDataParallel, which all-reduces the gradients of the
        parameters that train when it is built: it is built again when a callback changes which do
        (freeze-then-unfreeze, airnet's whitening bias). With --compile, what trains is compiled."""
        trains = (id(self.step_model), *(p.requires_grad for p in self.step_model.parameters()))
        if trains == self._trains:
            return
        first, self._trains, self.train_model = self._trains is None, trains, self.step_model
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.step_model, device_ids=ids)
        if self.cfg.compile and (first or self.world.distributed):
            self.compiled = torch.compile(self.train_model)

    def _describe(self) -> None:
        src, cfg = self.src, self.cfg
        self.info("run directory: %s", self.run_dir.path)
        self.info(
            "data: %s (%d classes; train %d, val %d images), preprocessing %s",
            src.location,
            len(src.classes),
            len(src.splits["train"]),
            len(src.splits["val"]),
            self.prep.to_dict(),
        )
        if self.left_out:
            self.run_dir.warning("left out %d unreadable files:", len(self.left_out))
            for split, p, r in self.left_out[:20]:
                self.run_dir.warning("  %s: %s (%s)", split, p, r)
            if len(self.left_out) > 20:
                self.run_dir.warning("  ... and %d more (all in left_out.csv)", len(self.left_out) - 20)
        self.info(
            "parameters (%s, freeze=%s):\n%s",
            cfg.model,
            cfg.freeze,
            format_parameter_table(parameter_table(self.state.model, cfg.model)),
        )
        self.info("precision: %s%s", self.state.precision, " (auto)" if cfg.precision == "auto" else "")
        if self.world_changed:
            self.info("resumed on %d rank(s), after %d steps on another number", self.world.size, self.state.step)
        if self.world.distributed:
            self.info(
                "distributed: %d ranks (%s), %d images per rank per step: a global batch of %d",
                self.world.size,
                distributed.backend_for(self.device),
                cfg.batch_size * cfg.accumulate,
                cfg.batch_size * cfg.accumulate * self.world.size,
            )
        if cfg.balance != "none":
            self.info("class balance: %s", self.balance_reason)
        if self.lr_find is not None:
            from imgclf.training.lr_find import write_result

            write_result(self.lr_find, self.run_dir.path)
            self.info("--lr auto: %s (lr_find.png)", self.lr_find["reason"])

    def _feature_cache(self) -> None:
        """--freeze backbone: only the head trains, so its inputs are computed once, not once an epoch."""
        t = time.perf_counter()
        cfg = self.cfg
        self.epoch_feed, self.eval_feed = build_feature_feeds(
            self.state.model,
            cfg.model,
            self.train_feed,
            self.val_feed,
            views=cfg.feature_views,
            seed=cfg.seed,
            device=self.device,
            amp=self.amp,
            channels_last=cfg.channels_last,
            batch_size=cfg.batch_size,
        )
        self.step_model = head_of(self.state.model, cfg.model)
        self.setup_seconds += time.perf_counter() - t
        self.info("frozen-feature cache built in %.1f s", time.perf_counter() - t)

    def _finish(self, train_seconds: float) -> dict:
        """The best checkpoint evaluated once more on validation, in fp32 as `imgclf evaluate` runs it (results.json's
        numbers are the ones a user gets back); plots and results.json."""
        st, cfg = self.state, self.cfg
        if not self.world.main:  # rank 0 evaluates the best checkpoint and writes the results
            summary = {"best_epoch": st.best["epoch"], "epochs": len(st.rows), "steps": st.step}
            return {**summary, "rank": self.world.rank, "run_dir": self.run_dir.path}
        best_path = self.run_dir.file("best.pt")
        load_weights(st.model, load_checkpoint(best_path), best_path)
        logits, labels = infer(
            self.step_model,
            self.eval_feed.batches(),
            self.device,
            None,
            desc="validate best",
            channels_last=cfg.channels_last,
        )
        bm = compute_metrics(logits, labels, self.src.classes)
        from imgclf.evaluation.plots import plot_curves

        plot_curves(st.rows, self.run_dir.file("curves.png"))
        write_eval_plots(
            bm,
            logits,
            labels,
            self.val_feed,
            self.src.classes,
            self.run_dir.path,
            title=f"validation, best epoch {st.best['epoch']}",
        )
        results = {
            "best_epoch": st.best["epoch"],
            "best_weights": st.best["weights"],
            "monitor": cfg.monitor,
            "best": {k: bm[k] for k in ("accuracy", "loss", "macro_f1", "top5_accuracy", "num_images")},
            "epochs": len(st.rows),
            "stopped_early": self.stop_reason,
            "total_seconds": round(sum(r["seconds"] for r in st.rows), 2),
            "train_seconds": round(train_seconds, 2),  # this session: from the first hook to the last epoch
            "steps": st.step,
            "setup_seconds": round(self.setup_seconds, 2),
            "model": cfg.model,
            "classes": self.src.classes,
            "left_out": len(self.left_out),
            "precision": st.precision,
            "options_set": sorted(cfg.explicit),
            "balance": self.balance,
            "data_fingerprint": self.fingerprint,
            "world_size": self.world.size,
        }
        if self.robust_subset is not None:
            best_row = st.rows[st.best["epoch"] - 1] if st.best["epoch"] else {}
            results["robust"] = {
                "attack": "pgd",
                "steps": 10,
                "eps": cfg.adv_eps,
                "images": len(self.robust_subset),
                "val_robust_acc": best_row.get("val_robust_acc"),
            }
        if cfg.calibrate:
            results["calibration"] = self._calibrate(best_path)
        self.run_dir.write_results(results)
        try:  # report.html is a convenience: it never fails the run
            from imgclf.evaluation.report import build_report
            from imgclf.infer.runtime import open_model

            # the validation logits above, not a second pass: the runner gives the page the classes and the
            # temperature (--calibrate's, which its runner would have divided the logits by)
            runner = open_model(best_path, device="cpu", precision="fp32")
            build_report(
                self.run_dir.path, predictions=(logits / runner.temperature, labels, self.val_feed.split, runner)
            )
        except Exception as e:
            self.run_dir.warning("report.html not written: %s: %s", type(e).__name__, e)
        if self.stop_reason:
            self.info("%s", self.stop_reason)
        self.info(
            "best epoch %d%s: val_acc %.4f val_macro_f1 %.4f; weights %s",
            st.best["epoch"],
            " (EMA weights)" if st.best["weights"] == "ema" else "",
            bm["accuracy"],
            bm["macro_f1"],
            best_path,
        )
        return {**results, "run_dir": self.run_dir.path}

    def _calibrate(self, best_path: str) -> dict:
        """--calibrate: the temperature of best.pt, fitted on the validation split (calibration.py)."""
        from imgclf.evaluation.calibration import calibrate, format_calibration

        r = calibrate(best_path, data_root=self.cfg.data_root, workers=self.cfg.workers, cache=self.cfg.cache)
        for line in format_calibration(r).splitlines():
            self.info("%s", line)
        return {k: v for k, v in r.to_dict().items() if k not in ("weights", "data")}


def _with_part_state(model: nn.Module, part: nn.Module, part_state: dict) -> nn.Module:
    """A copy of `model` whose submodule `part` (or the model itself) has the weights `part_state`."""
    import copy

    out = copy.deepcopy(model)
    prefix = "" if part is model else next(n for n, m in model.named_modules() if m is part) + "."
    out.load_state_dict({**model.state_dict(), **{prefix + k: v for k, v in part_state.items()}})
    return out


# ==================================================================================================== set-up


def train(config: TrainConfig | dict | None = None, *, callbacks=(), **options) -> dict:
    """Train a classifier; returns results.json's content (plus `run_dir`).

    `imgclf.train(data="digits", model="smallcnn", epochs=5)` or `imgclf.train(TrainConfig(...), epochs=5)`.
    The options given (keyword arguments, TrainConfig's own, flags) are the ones a recipe does not override.
    `callbacks`: your own `imgclf.core.callback.Callback`s, called after the built-in ones at each hook.
    """
    cfg, resume_ckpt = _configure(config, options)
    spec = _check_options(cfg, resume_ckpt)
    cfg = _resolve(cfg)
    device = resolve_device(cfg.device)
    _check_distributed(cfg, device, distributed.world_from_env())
    with distributed.setup(device, cfg.dist_timeout) as device:  # under torchrun: joins the process group
        return _run(cfg, spec, resume_ckpt, device, distributed.current(), list(callbacks))


def _run(cfg: TrainConfig, spec, resume_ckpt: dict | None, device, world: distributed.World, callbacks: list) -> dict:
    """Everything after the options' checks: data, state, run directory, and the Trainer's fit. Under torchrun
    every rank does this; what a rank might decide differently (a measured precision, the lr the range test
    suggests, the run's folder) is rank 0's decision, broadcast."""
    t_setup = time.perf_counter()
    src, prep, feeds, left_out = _open_data(cfg, spec, resume_ckpt)
    cfg = cfg.resolved(img_size=prep.img_size)
    found = None
    if cfg.lr == "auto":
        found = distributed.broadcast(find_lr_for(cfg, spec, src, feeds["train"], device), world)
        if found["suggestion"] is None:
            raise UsageError(
                f"--lr auto: the range test could not suggest a learning rate ({found['reason']}); "
                "pass --lr with a number, or run `imgclf lr-find` to see the curve"
            )
        cfg = cfg.resolved(lr=found["suggestion"])
    state, frozen, step_schedule = _build_state(
        cfg, spec, src, device, head_only=uses_feature_cache(cfg, feeds["train"]), sync_bn=world.distributed
    )
    state.callbacks += callbacks
    amp = _precision(cfg, device, state, prep, resume_ckpt, world)
    if resume_ckpt is not None:
        run_path = os.path.dirname(os.path.abspath(cfg.resume))
        if cfg.curriculum != "none":  # its difficulties come back from the checkpoint
            state.callbacks.append(_curriculum(cfg, None))
        _resume(state, resume_ckpt, cfg, run_path)
    else:
        # rank 0 names it (the others could see its folder appear on a shared filesystem and take another)
        run_path = distributed.broadcast(new_run_path(cfg.out, cfg.name, cfg.model, cfg.data) if world.main else None)
        if cfg.curriculum != "none":
            state.callbacks.append(_curriculum(cfg, _difficulty(cfg, feeds["train"].split, run_path)))
    robust = cfg.adv_train != "none" and cfg.adv_val_images > 0
    with RunDir(run_path, ema=cfg.ema, robust=robust, write=world.main) as run_dir:
        trainer = Trainer(
            cfg,
            state,
            run_dir,
            src=src,
            prep=prep,
            feeds=feeds,
            device=device,
            amp=amp,
            frozen=frozen,
            left_out=left_out,
            setup_seconds=time.perf_counter() - t_setup,
            resumed=resume_ckpt is not None,
            step_schedule=step_schedule,
            world=world,
        )
        trainer.lr_find = found
        return trainer.fit()


def _curriculum(cfg: TrainConfig, difficulty):
    from imgclf.training.curriculum import Curriculum

    return Curriculum(difficulty, cfg.curriculum, cfg.pacing, cfg.pacing_start, cfg.pacing_full)


def _difficulty(cfg: TrainConfig, split, run_path: str) -> torch.Tensor:
    """--difficulty: each training image's, from the file, or (auto) from a short reference run of the same
    options without the curriculum (OUT/NAME-reference: one epoch, or a fifth of --time-budget or --max-steps),
    scored as `imgclf score` scores."""
    from imgclf.training.curriculum import read_difficulty, score_split

    if cfg.difficulty != "auto":
        return read_difficulty(cfg.difficulty, split)
    short = {"time_budget": cfg.time_budget / 5} if cfg.time_budget else {"epochs": 1}
    if cfg.max_steps:
        short["max_steps"] = max(1, cfg.max_steps // 5)
    # replace(): these count as set, so the recipe does not put its own epochs back
    ref = cfg.replace(
        curriculum="none", name=os.path.basename(run_path) + "-reference", out=os.path.dirname(run_path), **short
    )
    log.info(
        "--difficulty auto: a reference run first (%s)",
        ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in short.items()),
    )
    result = train(ref)
    from imgclf.infer.runtime import open_model

    best = os.path.join(result["run_dir"], "best.pt")
    runner = open_model(best, device=cfg.device)
    kept, _, losses, _, bad = score_split(
        runner,
        split,
        runner.classes,
        batch_size=256,
        workers=default_workers() if cfg.workers is None else cfg.workers,
        cache=cfg.cache,
        desc="score train",
    )
    if bad or len(kept) != len(split):
        raise DataError(f"--difficulty auto: {len(bad)} training images could not be scored again")
    log.info("--difficulty auto: training images scored by %s (mean loss %.4f)", best, float(losses.mean()))
    return losses.float()


def preflight(config: TrainConfig, world_size: int) -> None:
    """The checks `train` makes before any work, for a run of `world_size` ranks (`--nproc` makes them before it
    starts torchrun, so a mistake is one line, not one per rank and torchrun's report)."""
    cfg, resume_ckpt = _configure(config, {})
    _check_options(cfg, resume_ckpt)
    if resume_ckpt is None:
        new_run_path(cfg.out, cfg.name, cfg.model, cfg.data)  # refuses a --name that is taken
    _check_distributed(_resolve(cfg), resolve_device(cfg.device), distributed.World(size=world_size))


def _check_distributed(cfg: TrainConfig, device, world: distributed.World) -> None:
    if cfg.curriculum != "none" and cfg.difficulty == "auto" and world.distributed and not cfg.resume:
        raise UsageError(
            "--difficulty auto runs its reference training in one process: under torchrun, train a reference "
            "model first, `imgclf score RUN/best.pt` it, and pass --difficulty RUN/difficulty.csv"
        )
    if not cfg.sync_bn:
        return
    if not world.distributed:
        log.info("--sync-bn: one process, so nothing to synchronise; BatchNorm runs as usual")
    elif device.type != "cuda":
        raise UsageError(
            "--sync-bn: PyTorch's SyncBatchNorm runs on GPUs only; on CPUs drop --sync-bn (each rank then "
            "normalises with its own batch, and DDP keeps rank 0's running statistics on every rank)"
        )


def uses_feature_cache(cfg: TrainConfig, train_feed) -> bool:
    """--freeze backbone on the fast path: the head trains on features computed once (features.py)."""
    mixing = cfg.mixup > 0 or cfg.cutmix > 0  # mixes images, not features: the backbone runs every epoch
    return (
        cfg.adv_train == "none"  # the attack changes the images, so the backbone runs on them every step
        and cfg.freeze == "backbone"
        and cfg.feature_cache
        and not cfg.freeze_epochs
        and not mixing
        and isinstance(train_feed, FastFeed)
    )


def _configure(config, options) -> tuple[TrainConfig, dict | None]:
    """The options of this run, and the checkpoint it resumes (None for a new run). Only the options the caller
    set count as set: a recipe fills the others, and a resumed run takes its own for everything but
    RESUME_OVERRIDES."""
    if isinstance(config, TrainConfig):
        cfg = config.replace(**options) if options else config
    else:
        cfg = make_config({**(config or {}), **options})
    explicit = cfg.explicit
    if not cfg.resume:
        from imgclf.training.recipes import apply_recipe

        return apply_recipe(cfg, explicit), None
    ckpt = load_checkpoint(cfg.resume)
    if "train_state" not in ckpt:
        raise CheckpointError(
            f"'{cfg.resume}' holds no training state (best.pt does not): resume from last.pt or an epoch_N.pt"
        )
    saved = make_config(ckpt["config"], source=cfg.resume)
    ignored = sorted(explicit - set(RESUME_OVERRIDES) - {"resume", "data"})
    if ignored:
        log.warning("resuming with the run's own settings; ignoring %s", ", ".join(ignored))
    keep = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if k in explicit}
    return saved.resolved(resume=cfg.resume, **keep), ckpt


def _check_options(cfg: TrainConfig, resume_ckpt: dict | None):
    """Every check that needs no data, first: a bad option must not cost a decode or leave a run folder."""
    check_config(cfg)
    if not cfg.data:
        raise UsageError("no data given: pass --data with a folder, a CSV, or one of cifar10, cifar100, digits")
    spec = get_spec(cfg.model)
    if cfg.pretrained and spec.weights is None and not cfg.weights_file:
        raise UsageError(f"{cfg.model} has no pretrained weights; drop --pretrained to train it from scratch")
    if cfg.img_size is not None and cfg.img_size < spec.min_img_size:
        raise UsageError(_too_small(cfg.img_size, spec))
    if cfg.freeze_epochs and cfg.freeze != "none":
        raise UsageError(
            f"--freeze-epochs {cfg.freeze_epochs} freezes the backbone for the first epochs and then trains "
            f"every layer; it cannot be combined with --freeze {cfg.freeze}: drop one of them"
        )
    _check_adv_curriculum(cfg)
    if resume_ckpt is None:
        check_output_folder(cfg.out, "--out")
    return spec


def _check_adv_curriculum(cfg: TrainConfig) -> None:
    if cfg.adv_train != "none":
        from imgclf.core.options import adv_eps, adv_step

        adv_eps(cfg.adv_eps)
        adv_step(cfg.adv_step)
    if cfg.monitor == "val_robust_acc" and (cfg.adv_train == "none" or not cfg.adv_val_images):
        raise UsageError(
            "--monitor val_robust_acc follows the robust validation of --adv-train: add --adv-train fgsm, nfgsm or pgd "
            "(with --adv-val-images above 0), or monitor val_acc"
        )
    if cfg.curriculum == "none":
        return
    if cfg.balance in ("sampler", "auto"):
        raise UsageError(
            f"--curriculum draws each batch from its pool of images, --balance {cfg.balance} may draw them by class: "
            "use --balance weights (or none) with a curriculum"
        )
    if cfg.difficulty != "auto" and not cfg.resume and not os.path.isfile(cfg.difficulty):
        raise UsageError(
            f"--difficulty '{cfg.difficulty}' not found: give a CSV of path,loss (`imgclf score WEIGHTS --data D` "
            "writes one) or auto"
        )


def find_lr_for(cfg: TrainConfig, spec, src, train_feed, device, **sweep) -> dict:
    """The learning-rate range test on the run's own model (built as the run builds it: same seed, freezing and
    parameter groups) and training batches, in fp32; raises when it cannot suggest one."""
    from imgclf.training.lr_find import lr_range_test

    probe = cfg.resolved(lr=1.0)  # group 0 at the swept lr, the others at their ratios to it
    state, _, _ = _build_state(probe, spec, src, device, head_only=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    result = lr_range_test(
        state.model,
        train_feed.epoch(gen),
        criterion,
        state.optimizer,
        device,
        None,
        channels_last=cfg.channels_last,
        **sweep,
    )
    return result


def lr_find(
    config: TrainConfig | dict | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    **options,
) -> dict:
    """`imgclf lr-find`: the learning-rate range test for the run these options describe (its model, freezing,
    optimizer and batches); writes lr_find.png and lr_find.json into OUT/NAME and returns the result (with
    `suggestion`, None when the curve gives none, and `run_dir`)."""
    cfg, _ = _configure(config, options)
    if cfg.resume:
        raise UsageError("lr-find starts from the options, not a checkpoint: drop --resume")
    spec = _check_options(cfg, None)
    cfg = _resolve(cfg)
    device = resolve_device(cfg.device)
    src, prep, feeds, _ = _open_data(cfg, spec, None)
    cfg = cfg.resolved(img_size=prep.img_size)
    result = find_lr_for(cfg, spec, src, feeds["train"], device, start_lr=start_lr, end_lr=end_lr, steps=steps)
    from imgclf.training.lr_find import write_result

    folder = new_run_path(cfg.out, cfg.name, "lr-find-" + cfg.model, cfg.data)
    os.makedirs(folder, exist_ok=True)
    write_result(result, folder)
    return {**result, "run_dir": folder}


def _resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the options whose default depends on others."""
    lr = cfg.lr if cfg.lr is not None else (0.01 if cfg.optimizer == "sgd" else 1e-3)  # "auto": found later
    wd = cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if cfg.optimizer == "sgd" else 0.05)
    workers = cfg.workers if cfg.workers is not None else default_workers()
    data = cfg.data
    if data and os.path.exists(data):
        data = os.path.abspath(data)  # so that evaluate and resume find it from any folder
    return cfg.resolved(lr=lr, weight_decay=wd, workers=workers, data=data)


def _too_small(img_size: int, spec) -> str:
    other = "" if spec.small else ", or a model for small images such as smallcnn"
    return (
        f"--img-size {img_size} is too small for {spec.name}, which takes at least {spec.min_img_size} px (below that "
        f"its strided and pooling layers leave no real pixels in its last feature map): pass --img-size "
        f"{spec.min_img_size} or more (smaller images are upscaled){other}"
    )


def _open_data(cfg: TrainConfig, spec, resume_ckpt: dict | None):
    """(source, preprocessing, feeds, left out). Decoded once; files that cannot be read are left out and
    listed, and the run goes on."""
    src = open_source(cfg.data, data_root=cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(src.classes) < 2:
        raise DataError(
            f"{src.location} has one class, '{src.classes[0]}': a classifier needs at least two; "
            "add a folder of images for each other class beside it"
        )
    if resume_ckpt is not None:
        _check_same_data(cfg.resume, resume_ckpt, src, None)
        prep = Preprocess.from_dict(resume_ckpt["preprocess"])
    else:
        prep = _preprocess(cfg, spec, src)
    left_out, feeds = [], {}
    for name in ("train", "val"):
        feed, bad = make_feed(
            src.splits[name],
            prep,
            cache=cfg.cache,
            workers=max(1, cfg.workers),
            augment=cfg.augment,
            batch_size=cfg.batch_size,
            eval_batch_size=max(cfg.batch_size, 256),
            brightness=cfg.brightness,
            contrast=cfg.contrast,
            randaugment=cfg.randaugment,
            desc=f"decode {name}",
        )
        if len(feed) == 0:
            raise UsageError(
                f"no readable images left in the {name} split of {cfg.data}; `imgclf check` lists the problems"
            )
        src.splits[name], feeds[name] = feed.split, feed
        left_out += [(name, p, r) for p, r in bad]
    if resume_ckpt is not None:  # compared as saved: after the unreadable files were left out
        _check_same_data(
            cfg.resume, resume_ckpt, src, os.path.join(os.path.dirname(os.path.abspath(cfg.resume)), "split.csv")
        )
    for note in src.notes:  # after the last refusal: a refused command prints one line
        log.info("%s", note)
    return src, prep, feeds, left_out


def _preprocess(cfg: TrainConfig, spec, src) -> Preprocess:
    own = None if (cfg.img_size or cfg.pretrained) else common_size(src.splits["train"], cfg.workers or 1)
    if own is not None and own < spec.min_img_size:
        log.info(
            "the images are %d px, below the %d px that %s takes: they are upscaled to %d px",
            own,
            spec.min_img_size,
            cfg.model,
            spec.min_img_size,
        )
        own = spec.min_img_size
    return resolve_preprocess(spec, img_size=cfg.img_size, pretrained=cfg.pretrained, own_size=own)


def _check_same_data(resume: str, ckpt: dict, src, split_csv: str | None) -> None:
    """Refuse to resume on data other than the run's: its metrics, best epoch and split would mix two datasets.
    Called twice: with the class names before decoding (cheap), then with the fingerprint after (`split_csv`
    given), which is computed as saved, once unreadable files are left out."""
    changed = None
    old = list(ckpt.get("classes") or [])
    if old and old != list(src.classes):
        added, removed = sorted(set(src.classes) - set(old)), sorted(set(old) - set(src.classes))
        changed = (
            "; ".join(
                p
                for p in (
                    f"classes added: {', '.join(added)}" if added else "",
                    f"classes removed: {', '.join(removed)}" if removed else "",
                )
                if p
            )
            or "class order differs"
        )
    elif split_csv is not None and ckpt.get("data_fingerprint") not in (None, src.fingerprint()):
        changed = _what_changed(src, split_csv)
    if changed:
        raise DataError(
            f"the data changed since '{resume}' was saved ({changed}): resuming would mix two validation "
            "sets; start a new run (without --resume), or restore the original data to resume"
        )


def _what_changed(src, split_csv: str) -> str:
    if not os.path.exists(split_csv):
        return "files were added, removed or modified"
    with open(split_csv, newline="") as f:
        before = {r["path"] for r in csv.DictReader(f)}
    now = {s.describe(i) for s in src.splits.values() for i in range(len(s))}
    added, removed = len(now - before), len(before - now)
    return (
        f"{added} file{'s' * (added != 1)} added, {removed} removed"
        if before != now
        else "the same files, but some of them modified"
    )


def _build_state(cfg: TrainConfig, spec, src, device, *, head_only: bool, sync_bn: bool = False):
    """(TrainState, frozen layers, per-step schedule): the model, optimizer, schedule, EMA and callbacks of a new
    run (a resume then loads its state). `head_only`: only the head trains (frozen-feature cache), so the EMA
    averages the head."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        len(src.classes),
        pretrained=cfg.pretrained and not cfg.resume,
        weights_file=cfg.weights_file if not cfg.resume else None,
    )
    frozen = freeze(model, cfg.model, "backbone" if cfg.freeze_epochs else cfg.freeze)
    if sync_bn and cfg.sync_bn:  # before the optimizer: the converted layers keep the same parameters
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = to_layout(model.to(device), cfg.channels_last)
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--freeze {cfg.freeze} leaves nothing to train in {cfg.model}")
    optimizer = _optimizer(cfg, _param_groups(cfg, model, spec, frozen if cfg.freeze_epochs else []))
    averaged = head_of(model, cfg.model) if head_only else model  # what trains, so what lookahead and EMA average
    callbacks = list(spec.callbacks() if spec.callbacks else [])
    if cfg.freeze_epochs:
        callbacks.append(FreezeThenUnfreeze(cfg.freeze_epochs, frozen))
        frozen = []  # FreezeThenUnfreeze sets the Trainer's frozen list each epoch
    if cfg.lookahead:
        callbacks.append(Lookahead(averaged))
    if cfg.time_budget and not cfg.max_steps:  # first: its clock starts before the model's own set-up
        # validation is charged per forward pass: the model's own views, twice with an EMA to validate too
        views = spec.eval_views * (2 if cfg.ema else 1)
        budget = TimeBudget(cfg.time_budget, cfg.batch_size * cfg.accumulate, views, robust_val_images(cfg, spec))
        callbacks.insert(0, budget)
    if cfg.patience:
        callbacks.append(EarlyStopping(cfg.patience, cfg.monitor))
    if cfg.log_histograms:
        callbacks.append(Histograms(cfg.log_histograms))
    if cfg.adv_train != "none" and cfg.adv_val_images:
        from imgclf.training.adversarial import OverfitWarning

        callbacks.append(OverfitWarning(cfg.adv_train))
    scheduler, step_schedule = _scheduler(cfg, optimizer)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        callbacks=callbacks,
        scaler=torch.amp.GradScaler(device.type, enabled=False),
        ema=make_ema(averaged, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None,
    )
    return state, frozen, step_schedule


def robust_val_images(cfg: TrainConfig, spec) -> float:
    """--adv-train's robust validation after each epoch, in training images of the same cost: PGD-10 is 10 forward
    and backward passes and a forward (1/3) per image and view, a training step (attack included) is
    adversarial.passes_per_step of them."""
    if cfg.adv_train == "none" or not cfg.adv_val_images:
        return 0.0
    from imgclf.evaluation.robustness import DEFAULT_STEPS
    from imgclf.training.adversarial import passes_per_step

    return (
        cfg.adv_val_images * spec.eval_views * (DEFAULT_STEPS + 1 / 3) / passes_per_step(cfg.adv_train, cfg.adv_steps)
    )


def _resume(state: TrainState, ckpt: dict, cfg: TrainConfig, run_path: str) -> None:
    st = dict(ckpt["train_state"])
    if "step" not in st:
        raise CheckpointError(
            f"'{cfg.resume}' was written by an older imgclf whose training state this one cannot "
            "continue: start a new run (its best.pt still evaluates, predicts and exports)"
        )
    load_weights(state.model, ckpt, cfg.resume)  # one line on a mismatch, not a state-dict dump
    state.load_state_dict(st)
    if state.epoch >= cfg.epochs:
        raise UsageError(
            f"'{cfg.resume}' already finished epoch {state.epoch} of {cfg.epochs}: pass --epochs N to train longer"
        )
    if not os.path.exists(os.path.join(run_path, "best.pt")):
        log.warning("no best.pt beside '%s': the best epoch is chosen again from the epochs still to run", cfg.resume)
        state.best = {"value": None, "epoch": 0, "weights": "model"}


def _precision(cfg: TrainConfig, device, state: TrainState, prep: Preprocess, resume_ckpt: dict | None, world=None):
    """The autocast dtype (None: fp32), set in `state` with the gradient scaler fp16 needs. Once the data has passed
    every check, since `auto` may time a few training steps on a CPU with native bf16; a resumed run keeps the
    precision it started with."""
    recorded = (resume_ckpt or {}).get("train_state", {}).get("precision")
    if cfg.precision == "auto" and recorded in ("fp32", "bf16", "fp16"):
        amp = training_precision(recorded, device)
    else:
        amp = training_precision(
            cfg.precision,
            device,
            state.model,
            key=cfg.model,
            img_size=prep.img_size,
            batch_size=cfg.batch_size,
            channels_last=cfg.channels_last,
        )
    chosen = distributed.broadcast(precision_name(amp), world)  # `auto` is measured: rank 0's measurement
    amp = training_precision(chosen, device) if chosen != precision_name(amp) else amp
    state.precision = chosen
    state.scaler = torch.amp.GradScaler(device.type, enabled=(amp == torch.float16))
    return amp


def probe_precision(name: str, img_size: int | None, batch_size: int, refresh: bool) -> dict:
    """`imgclf env --probe NAME`: the training-precision probe for a registry model, run now (or its cached result
    read), at `img_size` (default: the model's own) and `batch_size`."""
    from imgclf.compute.device import cpu_has_native_bf16, probe_bf16

    spec = get_spec(name)
    if torch.cuda.is_available() or not cpu_has_native_bf16():
        return {"model": name, "choice": "rule (no probe needed on this machine)"}
    model = build_model(name, 10, pretrained=False)
    size = img_size or spec.img_size
    return {"model": name, **probe_bf16(model, key=name, img_size=size, batch_size=batch_size, refresh=refresh)}


def precision_name(amp) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _param_groups(cfg: TrainConfig, model: nn.Module, spec, later: list[str]) -> list[dict]:
    """Trainable parameters (and those `later` unfrozen) in groups: the new head at --lr, the rest at --lr x
    --backbone-lr-scale; with --bias-lr-scale, BatchNorm biases at lr x scale and weight decay / scale (so their
    decay per step is unchanged), as airbench does."""

    def trains(name, p):
        return p.requires_grad or any(name == f or name.startswith(f + ".") for f in later)

    norm = {
        id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if trains(name, p):
            head = name.startswith(spec.head + ".")
            groups.setdefault(
                (head or cfg.backbone_lr_scale == 1.0, id(p) in norm and cfg.bias_lr_scale != 1.0), []
            ).append(p)
    out = []
    for (head, bias), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        lr = cfg.lr * (1.0 if head else cfg.backbone_lr_scale) * (cfg.bias_lr_scale if bias else 1.0)
        out.append(
            {"params": params, "lr": lr, "weight_decay": cfg.weight_decay / (cfg.bias_lr_scale if bias else 1.0)}
        )
    return out


def _optimizer(cfg: TrainConfig, groups) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt):
    """(scheduler, the per-step schedule or None): per epoch (step, cosine) or per optimisation step
    (warmup-linear, whose length the Trainer sets)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), None
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs)), None
    if cfg.scheduler == "warmup-linear":
        schedule = StepSchedule(1)
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule), schedule
    return None, None
