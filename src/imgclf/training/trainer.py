"""The training loop: `Trainer(plan, state, data, run_dir, callbacks).fit()`, and `train_steps`, the optimisation
steps the Trainer and the benchmarks both run.

    fit():  on_fit_start
            for each epoch:  seeds; on_epoch_start; train_one_epoch (per batch: on_batch, on_device_batch; per
                             step: on_step_start, on_after_backward, on_step_end); on_train_epoch_end;
                             validate (on_validate); on_validation_end
            on_fit_end

Everything beyond the loop, its seeds and the model's own validation is a callback (training/callbacks/: the
built-in ones and their order; imgclf.core.callback: the hooks and what a callback may read and change).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imgclf.compute import distributed
from imgclf.compute.device import autocast, to_layout
from imgclf.core.callback import arrange
from imgclf.core.errors import Preempted, RankLost, TrainingDiverged
from imgclf.core.escape import one_line
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.progress import progress
from imgclf.data.balance import class_weights, sample_weights
from imgclf.models.registry import apply_frozen_eval, format_parameter_table, parameter_table
from imgclf.training.build import epoch_seeds
from imgclf.training.callbacks import standard
from imgclf.training.callbacks.checkpoint import run_checkpoint
from imgclf.training.multilabel import summary_columns, task_line, task_loss
from imgclf.training.plan import RunData, RunPlan, decide_steps
from imgclf.training.preempt import Position, StopRequest, agreed, check_step, rank_part, restore_rng
from imgclf.training.rundir import RunDir
from imgclf.training.state import TrainState
from imgclf.training.validate import validation_columns

# Under torchrun the ranks agree whether a loss went non-finite every this many steps (and at each epoch's end).
NONFINITE_EVERY = 25


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
    totals=(0.0, 0, 0),
):
    """Optimisation steps over `batches` (`accumulate` batches a step): (summed loss, correct (`hits`), seen), counted
    on from `totals` (an epoch's part done before a stop). `hooks`: the Trainer's step hooks (on_step_end True ends
    the pass); `mix(x, y) -> (x, targets)` on the CPU (mixup, cutmix), `perturb(x, y) -> x` on the device (attacks)."""
    loss_sum, correct, seen = totals
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
        value, n = float(loss.detach()), y.size(0)  # read every step already (the loss column): checked for free
        if hooks is not None and not math.isfinite(value):
            hooks.on_nonfinite_loss(value)  # before the optimizer step
        loss_sum += value * n
        correct += hits(out.detach(), y, getattr(criterion, "multilabel", False))
        seen += n
        if (i + 1) % accumulate and i + 1 < n_batches:
            continue
        if hooks is not None:
            hooks.on_after_backward(loss)
        apply_gradients(opt, scaler, clip_grad)
        if hooks is not None and hooks.on_step_end():
            break
    return loss_sum, correct, seen


def hits(out: torch.Tensor, y: torch.Tensor, multilabel: bool):
    """The batch's right answers: images whose top class is the target's (int), or, multi-label (a criterion whose
    `multilabel` is true: training/multilabel.py's loss), the summed fraction of each image's labels decided right
    at 0.5 (a float: train_acc is then 1 - the Hamming loss)."""
    if multilabel:
        return float(((out > 0) == (y > 0.5)).float().mean(1).sum())
    return int((out.argmax(1) == (y if y.dim() == 1 else y.argmax(1))).sum())


def apply_gradients(opt, scaler, clip_grad: float | None) -> None:
    """The optimizer step on the summed gradients, their total L2 norm clipped to `clip_grad` first (unscaled)."""
    if clip_grad is not None:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_grad)
    scaler.step(opt)
    scaler.update()


class Trainer:
    """Runs `fit()` on a decided plan's state and data, writing into `run_dir`; `callbacks` are yours, called
    beside the built-in ones the plan asks for (callbacks.standard), all by `order`. The members a callback may
    use are imgclf.core.callback.Run's. `stop`: a StopRequest (training/preempt.py) that, once set, ends the run at
    the next step boundary with last.pt saved there (Preempted is raised)."""

    def __init__(
        self,
        plan: RunPlan,
        state: TrainState,
        data: RunData,
        run_dir: RunDir,
        callbacks=(),
        *,
        stop: StopRequest | None = None,
    ):
        if not plan.decided:
            raise ValueError("a Trainer runs a decided plan: plan, model = decide(plan, data) first")
        self.plan, self.state, self.data, self.run_dir = plan, state, data, run_dir
        self.callbacks = arrange([*standard(plan, data, state), *callbacks])
        state.attach(self.callbacks)  # a resumed run's callbacks take back their saved states
        self.criterion, self.sampler_weights = objective(plan, data)
        self.train_feed, self.eval_feed, self.step_model = data.train, data.val, state.model
        self.paced = self.loss = self.aug = self.stop_reason = None
        self.results, self.started, self.setup_seconds = {}, time.perf_counter(), 0.0
        self._gen, self._train_model, self._compiled, self._trains, self._first_epoch = None, state.model, None, None, 0
        self.stop_request, self._step0, self._sums, self._preempted = stop, 0, (0.0, 0, 0), False
        self._nonfinite: tuple[int, float] | None = None  # (the step, the loss) where this rank's loss went non-finite
        self.val_scores: dict = {}  # multi-label: the epoch's validation (probabilities, targets), by column prefix

    # ---------------------------------------------------------------- what callbacks use (core/callback.py Run)
    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def per_epoch(self) -> int:
        return self.plan.per_epoch

    def info(self, msg: str, *args) -> None:
        self.run_dir.info(msg, *args)

    def stop(self, reason: str) -> None:
        """End the run after this epoch (it is still validated and saved)."""
        self.stop_reason = self.stop_reason or reason

    def set_total_steps(self, total: int, *, fill: bool = False) -> None:
        """The run's length (--time-budget): rank 0's number (plan.decide_steps), shorter, or with `fill` (the
        budget plans the epochs) longer too; the per-step schedule ends there, a cosine one at the epochs it now
        has, and config.yaml says so."""
        self.plan = decide_steps(self.plan, total, fill=fill)
        if self.state.step_schedule is not None:
            self.state.step_schedule.total = self.plan.total_steps
        if isinstance(self.state.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.state.scheduler.T_max = max(1, self.plan.cfg.epochs)
        self.run_dir.write_config(self.plan.cfg.to_dict())

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        self.started = time.perf_counter()  # --time-budget counts from here: the epoch loop and what it needs first
        self._begin()
        with self._failures(), self._armed():
            while (
                self.state.epoch < self.plan.cfg.epochs and self.state.step < self.total_steps and not self.stop_reason
            ):
                pos = self._take_position()  # the epoch a resumed run stopped inside, or None
                t0 = time.perf_counter() - (pos.seconds if pos else 0.0)
                lr = self._start_epoch(pos)
                train_loss, train_acc = self.train_one_epoch(pos)
                if self._preempted:
                    self._save_position(lr, time.perf_counter() - t0)
                self.call("on_train_epoch_end")
                if self.state.scheduler is not None and self.state.step_schedule is None:
                    self.state.scheduler.step()  # per-epoch schedules
                row = {"epoch": self.state.epoch + 1, "train_loss": train_loss, "train_acc": train_acc}
                row |= {**self.validate(), "lr": lr, "seconds": time.perf_counter() - t0}
                self.state.epoch += 1
                self.state.rows.append(row)
                self.call("on_validation_end", row)
                self._stop_after_epoch()
        self.call("on_fit_end")
        return {**self.results, "run_dir": self.run_dir.path}

    def _begin(self) -> None:
        describe(self)
        rd, src = self.run_dir, self.data.source
        rd.write_config(self.plan.cfg.to_dict())  # a resumed run may have a new --epochs or --patience
        if self.state.epoch > 0:
            rd.purge_after(self.state.epoch)
        rd.write_left_out(self.data.left_out)
        if self.data.fixes is not None:
            rd.write_fixes(self.data.fixes)
            self.results["fixes"] = self.data.fixes.record()
        if src.val_origin == "carved" and not self.plan.resumed:  # a resumed run keeps the split it started with
            rd.write_split(src)
        if self.state.position:
            pos = self.state.position
            self.info(
                "continuing epoch %d from its batch %d (step %d)", self.state.epoch + 1, pos["batches"], self.state.step
            )
        self.call("on_fit_start")
        self.setup_seconds = time.perf_counter() - self.data.opened_at
        self._first_epoch = self.state.epoch + 1

    def _start_epoch(self, pos: Position | None = None) -> float:
        """The epoch's seeds, generators, on_epoch_start and model; its learning rate. `pos`: a run resumed inside
        the epoch, whose on_epoch_start sees `state.step` at the epoch's first step, as it did then, and whose
        callbacks then take back their states of the moment it stopped."""
        st = self.state
        self._step0 = pos.step0 if pos else st.step
        now, st.step = st.step, self._step0
        try:
            lr = self._seed_epoch()
        finally:
            st.step = now
        if pos is not None:
            mine = pos.ranks[self.plan.world.rank]["callbacks"]
            for cb in self.callbacks:
                if cb.state_key in mine:
                    cb.load_state_dict(mine[cb.state_key])
            lr = pos.lr
        return lr

    def _seed_epoch(self) -> float:
        seed, own = epoch_seeds(self.plan.cfg.seed, self.state.epoch + 1, self.plan.world.rank)
        torch.manual_seed(own)  # dropout and, with workers=0, augmentation
        self._gen = torch.Generator().manual_seed(seed)  # the order: the same on every rank, which takes its shard
        # augmentation and worker seeds: one generator per rank under torchrun, else the order's
        self.aug = torch.Generator().manual_seed(own) if self.plan.world.distributed else self._gen
        self.state.model.train()
        self.call("on_epoch_start")
        if not self.plan.cfg.freeze_epochs:  # FreezeThenUnfreeze sets the modes of what it freezes
            apply_frozen_eval(self.state.model, list(self.plan.frozen))
        self._wrap()
        return self.state.optimizer.param_groups[0]["lr"]

    def train_one_epoch(self, pos: Position | None = None) -> tuple[float, float]:
        """The epoch's steps (from where `pos` says it stopped, for a resumed run): (train_loss, train_acc)."""
        cfg, st, world = self.plan.cfg, self.state, self.plan.world
        epochs = "" if self.plan.budget_pending else f"/{-(-self.total_steps // self.per_epoch)}"
        shard = (world.rank, world.size) if world.distributed else None
        aug = self.aug if shard else None
        t = time.perf_counter()
        part = pos.ranks[world.rank] if pos else None
        resume = {}
        if part is not None:
            restore = lambda: restore_rng(part, self._gen, self.aug, self.plan.device)  # noqa: E731
            resume = {"start": pos.batches, "restore": restore}
        totals = (part["loss_sum"], part["correct"], part["seen"]) if part else (0.0, 0, 0)
        loss_sum, correct, seen = train_steps(
            self._train_model if self._compiled is None else self._compiled,
            self.train_feed.epoch(self._gen, self.sampler_weights, shard=shard, aug=aug, paced=self.paced, **resume),
            self.criterion,
            st.optimizer,
            st.scaler,
            self.plan.device,
            self.plan.amp,
            channels_last=cfg.channels_last,
            desc=f"epoch {st.epoch + 1}{epochs}",
            log_every=cfg.log_every,
            accumulate=cfg.accumulate,
            clip_grad=cfg.clip_grad,
            hooks=self,
            mix=self._on_batch,
            max_steps=self.total_steps - st.step,
            perturb=self._on_device_batch,
            totals=totals,
        )
        self._sums = (loss_sum, correct, seen)
        self._check_finite()  # before validation: every rank together
        if self._compiled is not None and st.epoch + 1 == self._first_epoch:
            self.info("torch.compile: the first epoch took %.1f s, compilation included", time.perf_counter() - t)
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def validate(self) -> dict:
        """The epoch's validation columns: the model's, then the callbacks' (on_validate: the EMA's, robust)."""
        self.val_scores.clear()
        try:
            row = validation_columns(
                self.step_model,
                self.eval_feed,
                self.plan,
                self.data.source.classes,
                desc="validate",
                keep=self.val_scores,
            )
            self.call("on_validate", row)
        except TrainingDiverged as e:  # the last steps' loss was finite, the weights they left are not
            raise TrainingDiverged(diverged(self, f"after epoch {self.state.epoch + 1}: {e}")) from None
        return row

    # ---------------------------------------------------------------- hooks train_steps calls
    def on_step_start(self) -> None:
        self.call("on_step_start")

    def on_after_backward(self, loss) -> None:
        self.loss = loss
        self.call("on_after_backward")

    def on_nonfinite_loss(self, value: float) -> None:
        """A non-finite loss on this rank: the run stops, in one process before this step changes anything;
        under torchrun when the ranks next agree (_check_finite), so that none waits for a rank that left."""
        self._nonfinite = self._nonfinite or (self.state.step + 1, value)
        if not self.plan.world.distributed:
            self._check_finite()

    def _check_finite(self) -> None:
        """Stop the run if a rank's loss went non-finite. Under torchrun the ranks agree on the first such step in
        one all-reduce of one number, every NONFINITE_EVERY steps and at the end of each epoch's training (a
        rank that saw it keeps stepping until then: DDP's all-reduce spreads its gradients to every rank anyway)."""
        step = self._nonfinite[0] if self._nonfinite else math.inf
        step = distributed.all_min(step, self.plan.device, self.plan.world)
        if step == math.inf:
            return
        value = self._nonfinite[1] if self._nonfinite and self._nonfinite[0] == step else "not finite"
        epoch = self.state.epoch + 1
        raise TrainingDiverged(diverged(self, f"step {int(step)}: the loss is {value}, in epoch {epoch}"))

    def on_step_end(self) -> bool:
        st = self.state
        st.step += 1
        if self.plan.world.distributed and st.step % NONFINITE_EVERY == 0:
            self._check_finite()
        if st.step_schedule is not None:
            st.scheduler.step()
        self.call("on_step_end")
        if st.step >= self.total_steps:
            return True
        self._preempted = self._stop_now()
        return self._preempted

    def _on_batch(self, x, y):
        for cb in self.callbacks:
            x, y = cb.on_batch(self, x, y)
        return x, y

    def _on_device_batch(self, x, y):
        for cb in self.callbacks:
            x = cb.on_device_batch(self, x, y)
        return x

    # ---------------------------------------------------------------- a stop asked for (training/preempt.py)
    def _take_position(self) -> Position | None:
        pos, self.state.position = self.state.position, None
        return Position.from_dict(pos) if pos else None

    def _stop_now(self) -> bool:
        """Whether to stop after this step (not the epoch's last: then the stop comes once the epoch is saved).
        Every rank asks at the same steps, and stops at the same one."""
        st, world = self.state, self.plan.world
        if self.stop_request is None or st.step - self._step0 >= self.per_epoch or not check_step(st.step, world):
            return False
        return agreed(self.stop_request, world, self.plan.device)

    def _save_position(self, lr: float, seconds: float) -> None:
        """last.pt at this step boundary, with the position inside the epoch (every rank's part), then Preempted."""
        st, world, cfg = self.state, self.plan.world, self.plan.cfg
        batches = (st.step - self._step0) * cfg.accumulate
        part = rank_part(self._sums, self._gen, self.aug, self.plan.device, self.callbacks)
        st.position = Position(batches, self._step0, lr, seconds, distributed.gather(part, world)).to_dict()
        last = st.rows[-1] if st.rows else {}
        metrics = {k: last["val_" + c] for k, c in summary_columns(cfg.task) if "val_" + c in last}
        try:
            self.run_dir.save(run_checkpoint(self, metrics, state=st.state_dict()), "last.pt")
        finally:
            st.position = None
        distributed.barrier(world)  # no rank ends before last.pt is whole
        path = self.run_dir.file("last.pt")
        raise Preempted(
            f"stopped at step {st.step} (epoch {st.epoch + 1}, after {st.step - self._step0} of its {self.per_epoch} "
            f"steps), as asked (signal {int(self.stop_request.signum)}): {path} holds the run there; continue it with "
            f"--resume {path} (or --resume auto)"
        )

    def _stop_after_epoch(self) -> None:
        """A stop asked for while the epoch ended: its last.pt is written; stop unless the run ends now anyway."""
        st = self.state
        more = st.epoch < self.plan.cfg.epochs and st.step < self.total_steps and not self.stop_reason
        if self.stop_request is None or not more or not agreed(self.stop_request, self.plan.world, self.plan.device):
            return
        path = self.run_dir.file("last.pt")
        raise Preempted(
            f"stopped after epoch {st.epoch}, as asked (signal {int(self.stop_request.signum)}): {path} holds it; "
            f"continue the run with --resume {path} (or --resume auto)"
        )

    # ---------------------------------------------------------------- the machinery
    def _wrap(self) -> None:
        """Under torchrun the model trains inside DistributedDataParallel, which all-reduces the gradients of the
        parameters that train when it is built: it is built again when a callback changes which do
        (freeze-then-unfreeze, airnet's whitening bias). With --compile, what trains is compiled."""
        trains = (id(self.step_model), *(p.requires_grad for p in self.step_model.parameters()))
        if trains == self._trains:
            return
        first, self._trains, self._train_model = self._trains is None, trains, self.step_model
        if self.plan.world.distributed:
            ids = [self.plan.device] if self.plan.device.type == "cuda" else None
            self._train_model = DistributedDataParallel(self.step_model, device_ids=ids)
        if self.plan.cfg.compile and (first or self.plan.world.distributed):
            self._compiled = torch.compile(self._train_model)

    @contextlib.contextmanager
    def _armed(self):
        """While the epochs run, a stop asked for waits for the next step boundary (StopRequest.armed)."""
        if self.stop_request is not None:
            self.stop_request.armed = True
        try:
            yield
        finally:
            if self.stop_request is not None:
                self.stop_request.armed = False

    @contextlib.contextmanager
    def _failures(self):
        """A diverged run's line into train.log; a rank that stopped answering as one line saying how to go on."""
        try:
            yield
        except TrainingDiverged as e:  # the caller reports it; train.log keeps it with the run
            self.run_dir.say(logging.ERROR, "%s", e, echo=False)
            raise
        except Preempted as e:
            self.run_dir.say(logging.WARNING, "%s", e, echo=False)
            raise
        except Exception as e:
            if not (self.plan.world.distributed and distributed.lost_peer(e)):
                raise
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo's "[file:line] what. hint"
            raise RankLost(
                f"rank {self.plan.world.rank}: another rank stopped answering ({first[:160]}); the run stopped after "
                f"epoch {self.state.epoch}: continue it with --resume {os.path.join(self.run_dir.path, 'last.pt')}"
            ) from e


def diverged(trainer: Trainer, what: str) -> str:
    """The line of a run stopped by a non-finite loss or output: what, the last good checkpoint, what to do."""
    st, cfg = trainer.state, trainer.plan.cfg
    if st.epoch >= trainer._first_epoch:  # saved by this run: last.pt is its last whole epoch
        kept = f"the last good checkpoint is {trainer.run_dir.file('last.pt')} (epoch {st.epoch})"
    elif trainer.plan.resumed:
        kept = f"the last good checkpoint is {cfg.resume} (epoch {st.epoch})"
    else:
        kept = "no checkpoint was saved: it diverged in its first epoch"
    lr = f"{cfg.lr:g}" if isinstance(cfg.lr, float) else str(cfg.lr)
    return f"{what}; the run stopped; {kept}; train with a lower --lr (this run's was {lr}), or add --clip-grad"


def objective(plan: RunPlan, data: RunData):
    """(the loss, the sampler's per-image weights or None), as --balance (decided) and --label-smoothing ask;
    multi-label: binary cross-entropy (training/multilabel.py), weighted per label by --pos-weight auto or
    --balance weights, its sampler over each image's rarest label (the split's strata)."""
    split, n_cls = data.train.split, len(data.source.classes)
    if plan.cfg.task == MULTILABEL:
        sampler = sample_weights(split.labels, n_cls + 1) if plan.balance == "sampler" else None
        weighted = plan.cfg.pos_weight == "auto" or plan.balance == "weights"
        return task_loss(plan.cfg, split.targets, plan.device, weighted=weighted), sampler
    labels = split.labels
    weight = class_weights(labels, n_cls).to(plan.device) if plan.balance == "weights" else None
    sampler = sample_weights(labels, n_cls) if plan.balance == "sampler" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=plan.cfg.label_smoothing), sampler


def describe(trainer: Trainer) -> None:
    """The run's first lines: where it writes, its data, what was left out, the model, precision and machinery."""
    plan, data, cfg, rd = trainer.plan, trainer.data, trainer.plan.cfg, trainer.run_dir
    src = data.source
    rd.info("run directory: %s", rd.path)
    splits = (src.location, len(src.classes), len(src.splits["train"]), len(src.splits["val"]))
    what = "labels" if cfg.task == MULTILABEL else "classes"
    rd.info(
        "data: %s (%d %s; train %d, val %d images), preprocessing %s",
        *splits[:2],
        what,
        *splits[2:],
        data.preprocess.to_dict(),
    )
    if cfg.task == MULTILABEL:
        rd.info("task: %s", task_line(plan, trainer.criterion))
    if src.grouping:
        g = src.grouping
        rd.info(
            "groups (--group-by %s): %d; %s; on more than one split: %d",
            g["by"],
            g["groups"],
            ", ".join(f"{k} {n}" for k, n in g["per_split"].items()),
            g["on_several_splits"],
        )
    if data.left_out:
        rd.warning("left out %d unreadable files:", len(data.left_out))
        for split, p, r in data.left_out[:20]:
            rd.warning("  %s: %s (%s)", split, one_line(p), one_line(r))
        if len(data.left_out) > 20:
            rd.warning("  ... and %d more (all in left_out.csv)", len(data.left_out) - 20)
    table = format_parameter_table(parameter_table(trainer.state.model, cfg.model))
    rd.info("parameters (%s, freeze=%s):\n%s", cfg.model, cfg.freeze, table)
    rd.info("precision: %s%s", trainer.state.precision, " (auto)" if cfg.precision == "auto" else "")
    if plan.resized_world:
        rd.info("resumed on %d rank(s), after %d steps on another number", plan.world.size, trainer.state.step)
    if plan.world.distributed:
        per_rank = cfg.batch_size * cfg.accumulate
        backend = distributed.backend_for(plan.device)
        rd.info(
            "distributed: %d ranks (%s), %d images per rank per step: a global batch of %d",
            plan.world.size,
            backend,
            per_rank,
            per_rank * plan.world.size,
        )
    if cfg.balance != "none":
        rd.info("class balance: %s", plan.balance_reason)
    if plan.lr_search is not None:
        rd.write_lr_find(plan.lr_search)
        rd.info("--lr auto: %s (lr_find.png)", plan.lr_search["reason"])
