"""--time-budget: how many optimisation steps fit in the minutes given, measured on the first steps."""

from __future__ import annotations

import time

from imgclf.core.callback import Callback


class TimeBudget(Callback):
    """--time-budget: after a few steps, how many optimisation steps fit in the minutes left; the run is set to
    that many. `fill` (no --epochs given: RunPlan.fills_budget): the run plans as many epochs as fill the budget,
    the per-step schedule (warm-up, decay), airnet's whitening-bias switch and lookahead spanning exactly those
    steps; else (--epochs N) the run is only ever shortened, to at most N epochs.

    The first step is not timed (warm-up). Validation after each epoch is charged too: its images, at the
    training step's cost per image divided by 3 (forward only), times the model's evaluation views (test-time
    augmentation), plus `val_extra` training images' worth of other per-epoch validation (--adv-train's attacks).
    The steps before the decision run on the provisional length (--epochs' or the recipe's)."""

    order = 10  # first at on_fit_start: its clock starts before the model's own set-up
    state_key = "time_budget"
    PROBE = 6

    def __init__(
        self, minutes: float, batch_size: int, eval_views: int = 1, val_extra: float = 0.0, *, fill: bool = False
    ):
        self.seconds, self.batch_images, self.eval_views = minutes * 60.0, batch_size, eval_views
        self.val_extra, self.fill = val_extra, fill
        self.t0 = self.t1 = self.rate = None
        self.total, self.first = None, None

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
        total = self.first + fixed
        trainer.set_total_steps(total if self.fill else min(trainer.total_steps, total), fill=self.fill)
        trainer.info(
            "time budget %.1f min: %d optimisation steps (%.2f epochs; %s) at %.0f images/s",
            self.seconds / 60,
            trainer.total_steps,
            trainer.total_steps / trainer.per_epoch,
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
        # the most training steps that fit with their validations: for each number of epochs, as many steps as
        # fit beside that many validations, if that is more steps than one epoch fewer would hold
        self.total = done
        for epochs in range(1, -(-steps // per_epoch) + 1):
            fit = min(epochs * per_epoch, int(steps - epochs * val))
            if fit > (epochs - 1) * per_epoch:
                self.total = max(self.total, fit)
        return self.total
