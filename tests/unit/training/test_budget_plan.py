"""--time-budget without --epochs plans the run that fills the budget: more epochs than the recipe's when they fit,
the per-step schedule (warm-up, decay) and a cosine one ending at the planned last step; --epochs N keeps its cap."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from imgclf.core.callback import Callback
from imgclf.training.build import StepSchedule
from imgclf.training.callbacks import budget

PER_EPOCH = 5  # 72 training images (3 classes x 24) at batch 16: 5 steps an epoch (the last one of 8)


class SimClock(Callback):
    """TimeBudget's clock driven by the run, as a machine of these speeds would time it: `slow_s` seconds for each
    of the first `slow` steps (the probe's one-off costs), then `step_s` a step, and `val_s` each validation."""

    order = 5  # before TimeBudget (10) at every hook: a step's or a validation's time has passed when it looks

    def __init__(self, monkeypatch, step_s: float, val_s: float, slow: int = 0, slow_s: float = 0.0, spike=()):
        self.now, self.step_s, self.val_s, self.slow, self.slow_s = 0.0, step_s, val_s, slow, slow_s
        self.spike = spike  # (first step, last step, seconds a step): something else slowed the machine then
        monkeypatch.setattr(budget, "time", SimpleNamespace(perf_counter=lambda: self.now))

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if self.spike and self.spike[0] <= step <= self.spike[1]:
            self.now += self.spike[2]
        else:
            self.now += self.slow_s if step <= self.slow else self.step_s

    def on_validation_end(self, trainer, row) -> None:
        self.now += self.val_s


@pytest.fixture
def common(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", classes=("a", "b", "c"), n=24, n_val=6, size=32)
    return dict(data=str(data), recipe="fast", batch_size=16, workers=0, out=str(tmp_path / "runs"))


def final_lrs(path) -> list[float]:
    state = torch.load(path, weights_only=True)["train_state"]
    return [g["lr"] for g in state["optimizer"]["param_groups"]]


@pytest.mark.kernels
def test_a_budget_without_epochs_plans_the_steps_that_fill_it_and_resumes_exactly(tmp_path, common, monkeypatch):
    from imgclf import train

    # 30 s; the probe's steps take 0.3 s (it plans ~90 steps), the later ones 0.1 s (~270 fit): each epoch's end
    # plans again from that epoch and the run fills the budget to within one epoch's cycle (0.5 s + 0.2 s)
    clock = SimClock(monkeypatch, step_s=0.1, val_s=0.2, slow=1 + budget.TimeBudget.PROBE, slow_s=0.3)
    res = train(**common, time_budget=0.5, name="planned", callbacks=[clock])
    cfg = yaml.safe_load(open(tmp_path / "runs/planned/config.yaml"))
    assert res["steps"] > 200 > 10 * PER_EPOCH  # neither the recipe's 10 epochs nor the probe's plan were the limit
    assert 30 - (PER_EPOCH * 0.1 + 0.2) < clock.now <= 30  # filled, and not overrun
    assert res["steps"] == cfg["max_steps"] == res["time_budget"]["planned_steps"]
    assert cfg["epochs"] == res["epochs"] == math.ceil(res["steps"] / PER_EPOCH) == res["time_budget"]["planned_epochs"]
    log = (tmp_path / "runs/planned/train.log").read_text()
    assert "from its first steps" in log and "planned again from the last epoch" in log
    # the warm-up-then-linear schedule reached its end (0.07 of each group's lr) at the last step, not before
    base = [common_lr * scale for common_lr, scale in zip([cfg["lr"]] * 2, (1.0, cfg["bias_lr_scale"]))]
    assert sorted(final_lrs(tmp_path / "runs/planned/last.pt")) == pytest.approx(sorted(b * 0.07 for b in base))
    assert StepSchedule(res["steps"])(res["steps"]) == pytest.approx(0.07)

    # resumed before its last epoch (past the decision), the run keeps its planned length and its numbers
    (tmp_path / "runs/resumed").mkdir()
    last = f"epoch_{res['epochs'] - 1}.pt"
    shutil.copy(tmp_path / "runs/planned" / last, tmp_path / "runs/resumed" / last)
    again = train(resume=str(tmp_path / "runs/resumed" / last), workers=0)
    assert (again["steps"], again["epochs"]) == (res["steps"], res["epochs"])
    a = (tmp_path / "runs/planned/metrics.csv").read_text().splitlines()
    b = (tmp_path / "runs/resumed/metrics.csv").read_text().splitlines()
    drop_seconds = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731
    assert drop_seconds(a) == drop_seconds(b)


def test_a_slower_machine_than_measured_shortens_the_plan(tmp_path, common, monkeypatch):
    """The probe's steps fast (0.05 s), the later ones 0.2 s: planned again after each epoch, the run ends within
    its budget instead of running 4x over it."""
    from imgclf import train

    clock = SimClock(monkeypatch, step_s=0.2, val_s=0.1, slow=1 + budget.TimeBudget.PROBE, slow_s=0.05)
    res = train(**common, time_budget=0.1, name="slower", callbacks=[clock], save_every=0)
    assert 6 - (PER_EPOCH * 0.2 + 0.1) < clock.now <= 6 + 0.2  # at most the one step each re-plan keeps
    assert res["steps"] == yaml.safe_load(open(tmp_path / "runs/slower/config.yaml"))["max_steps"]


class Plans(Callback):
    """The run's planned length after each epoch's re-plan."""

    order = 11  # after TimeBudget (10)

    def __init__(self):
        self.totals = []

    def on_validation_end(self, trainer, row) -> None:
        self.totals.append(trainer.total_steps)


def test_one_slow_epoch_costs_its_seconds_not_the_plan(tmp_path, common, monkeypatch):
    """Steps 41-45 (the ninth epoch) take 3x as long, as if another job had run then: the plan loses about the
    seconds they cost (~10 of ~250 steps), it is not cut to the speed of that one epoch."""
    from imgclf import train

    clock = SimClock(monkeypatch, step_s=0.1, val_s=0.2, spike=(41, 45, 0.3))
    plans = Plans()
    res = train(**common, time_budget=0.5, name="spike", callbacks=[clock, plans], save_every=0)
    before, after = plans.totals[7], min(plans.totals[8:-1])  # planned after epoch 8; after 9 and later
    assert before - 20 < after <= before, plans.totals
    assert 30 - (PER_EPOCH * 0.1 + 0.2) < clock.now <= 30 and res["steps"] == plans.totals[-1]


def test_epochs_given_with_a_budget_stay_a_cap(tmp_path, common, monkeypatch):
    """--epochs 5 with 6 s: the slow probe plans fewer steps than 5 epochs (~17), the later epochs' speed more
    than them (~30): planned again, the run grows to its cap and no further."""
    from imgclf import train

    clock = SimClock(monkeypatch, step_s=0.1, val_s=0.2, slow=1 + budget.TimeBudget.PROBE, slow_s=0.3)
    res = train(**common, time_budget=0.1, epochs=5, name="capped", callbacks=[clock], save_every=0)
    cfg = yaml.safe_load(open(tmp_path / "runs/capped/config.yaml"))
    assert res["steps"] == cfg["max_steps"] == 5 * PER_EPOCH and cfg["epochs"] == res["epochs"] == 5
    assert clock.now <= 6
    plans = [line for line in (tmp_path / "runs/capped/train.log").read_text().splitlines() if "time budget" in line]
    assert "from its first steps" in plans[0] and "at most --epochs 5" in plans[0]
    assert any("planned again from the last epoch" in line for line in plans[1:])


def test_a_cosine_schedule_ends_at_the_planned_epochs(tmp_path, make_folder, monkeypatch):
    from imgclf import train

    clock = SimClock(monkeypatch, step_s=0.1, val_s=0.01)  # 4.5 s: ~40 epochs of one step fit
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4, n_val=1, size=16)
    opts = dict(data=str(data), model="smallcnn", batch_size=8, workers=0, out=str(tmp_path / "runs"))
    res = train(**opts, scheduler="cosine", name="cosine", time_budget=0.075, save_every=0, callbacks=[clock])
    assert res["epochs"] > 30  # the default 30 epochs were not the limit
    assert yaml.safe_load(open(tmp_path / "runs/cosine/config.yaml"))["epochs"] == res["epochs"] == res["steps"]
    assert max(final_lrs(tmp_path / "runs/cosine/last.pt")) == pytest.approx(0.0, abs=1e-9)  # at T_max: planned
