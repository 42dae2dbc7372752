"""--time-budget: how many optimisation steps fit in the minutes given, measured on the first steps and measured
again after each epoch."""

from __future__ import annotations

import time
from collections import deque
from statistics import median

from imgclf.core.callback import Callback


def most_steps(capacity: float, per_val: float, per_epoch: int) -> int:
    """The most training steps, from an epoch's start, that fit in `capacity` training steps' time beside one
    validation (`per_val` steps' time) after each epoch begun: for each number of epochs, as many steps as fit
    beside that many validations, if that is more than one epoch fewer would hold."""
    best = 0
    for epochs in range(1, int(capacity // max(1, per_epoch)) + 2):
        fit = min(epochs * per_epoch, int(capacity - epochs * per_val))
        if fit > (epochs - 1) * per_epoch:
            best = max(best, fit)
    return best


class TimeBudget(Callback):
    """--time-budget: after a few steps, how many optimisation steps fit in the minutes left; the run is set to
    that many. `fill` (no --epochs given: RunPlan.fills_budget): the run plans as many epochs as fill the budget,
    the per-step schedule (warm-up, decay), airnet's whitening-bias switch and lookahead spanning exactly those
    steps; else (--epochs N) the run is only ever shortened, to at most N epochs.

    The first step is not timed (warm-up). Validation after each epoch is charged too: its images, at the
    training step's cost per image divided by 3 (forward only), times the model's evaluation views (test-time
    augmentation), plus `val_extra` training images' worth of other per-epoch validation (--adv-train's attacks).
    The steps before the decision run on the provisional length (--epochs' or the recipe's).

    The first steps are slower than the steady state (allocations, caches warming, airnet's whitening bias still
    training), so after each epoch the plan is made again from the epochs as measured: the median of the last
    `RECENT` epochs' steps per second and of everything else their cycles took (validation, the previous epoch's
    checkpoint), against the seconds left; the median, so that one epoch slowed by something else on the machine
    does not cut the plan (it only costs the seconds it took). The schedule follows the new total from the next
    step on (decisions and re-plans are rank 0's on every rank)."""

    order = 10  # first at on_fit_start: its clock starts before the model's own set-up
    state_key = "time_budget"
    PROBE = 6
    RECENT = 3

    def __init__(
        self, minutes: float, batch_size: int, eval_views: int = 1, val_extra: float = 0.0, *, fill: bool = False
    ):
        self.seconds, self.batch_images, self.eval_views = minutes * 60.0, batch_size, eval_views
        self.val_extra, self.fill = val_extra, fill
        self.t0 = self.t1 = self.rate = None
        self.total, self.first, self.cap, self.logged = None, None, None, 0
        self.epoch_t0 = self.epoch_step0 = self.train_seconds = self.cycle_end = None
        self.recent = deque(maxlen=self.RECENT)  # (steps per second, other seconds) of the last epochs

    def state_dict(self) -> dict:
        # a run stopped before the decision and resumed still fills its budget (its config then names --epochs)
        return {"fill": self.fill}

    def load_state_dict(self, state: dict) -> None:
        self.fill = bool(state.get("fill", self.fill))

    def on_fit_start(self, trainer) -> None:
        self.t0, self.first = time.perf_counter(), trainer.state.step

    def on_step_end(self, trainer) -> None:
        if self.total is not None:
            return
        done = trainer.state.step - self.first
        fixed = self.observe(done, val_images=len(trainer.eval_feed), per_epoch=trainer.per_epoch)
        if fixed is None:
            return
        self.cap = None if self.fill else trainer.total_steps
        self._set(trainer, self.first + fixed)
        self._log(trainer, "from its first steps")

    def on_epoch_start(self, trainer) -> None:
        self.epoch_t0, self.epoch_step0 = time.perf_counter(), trainer.state.step

    def on_train_epoch_end(self, trainer) -> None:
        self.train_seconds = time.perf_counter() - self.epoch_t0

    def on_validation_end(self, trainer, row: dict) -> None:
        now = time.perf_counter()
        cycle = now - (self.cycle_end if self.cycle_end is not None else self.epoch_t0)
        self.cycle_end = now
        # every condition here is the same on every rank (steps, not seconds): set_total_steps is a broadcast
        if self.total is None or trainer.state.step >= trainer.total_steps:
            return
        steps = trainer.state.step - max(self.epoch_step0, self.first)  # a resumed epoch: this session's steps
        more = self.replan(steps, self.train_seconds, cycle, now, trainer.per_epoch)
        # at least one step more: the run's end (lookahead's final average, the schedule's last lr) comes at the
        # end of a training epoch, which this one has passed
        self._set(trainer, trainer.state.step + max(1, more))
        if abs(trainer.total_steps - self.logged) > 0.02 * self.logged:  # the story, not each epoch's few steps
            self._log(trainer, f"planned again from the last epoch, was {self.logged} steps")

    def replan(self, steps: int, train_seconds: float, cycle: float, now: float, per_epoch: int) -> int:
        """The steps that fit from an epoch's end, where the epoch just ended took `train_seconds` for its `steps`
        and `cycle` seconds in all (with validation and saving): by the median of the recent epochs."""
        # validation, checkpoints, the callbacks' epoch ends: the rest of the cycle
        self.recent.append((steps / max(train_seconds, 1e-9), max(0.0, cycle - train_seconds)))
        self.rate = median(r for r, _ in self.recent)
        other = median(o for _, o in self.recent)
        left = self.seconds - (now - self.t0)
        return most_steps(left * self.rate, other * self.rate, per_epoch)

    def _set(self, trainer, total: int) -> None:
        trainer.set_total_steps(total if self.cap is None else min(self.cap, total), fill=self.fill)

    def _log(self, trainer, how: str) -> None:
        self.logged = trainer.total_steps
        trainer.info(
            "time budget %.1f min: %d optimisation steps (%.2f epochs; %s; %s) at %.0f images/s",
            self.seconds / 60,
            trainer.total_steps,
            trainer.total_steps / trainer.per_epoch,
            how,
            "planned to fill it, warm-up and decay over them"
            if self.fill
            else f"at most --epochs {trainer.plan.cfg.epochs}",
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
        self.total = max(done, most_steps(steps, val, per_epoch))
        return self.total
