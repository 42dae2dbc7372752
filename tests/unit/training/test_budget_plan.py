"""--time-budget without --epochs plans the run that fills the budget: more epochs than the recipe's when they fit,
the per-step schedule (warm-up, decay) and a cosine one ending at the planned last step; --epochs N keeps its cap."""

from __future__ import annotations

import itertools
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from imgclf.training.build import StepSchedule
from imgclf.training.callbacks import budget

PER_EPOCH = 5  # 72 training images (3 classes x 24) at batch 16: 5 steps an epoch (the last one of 8)


def fake_clock(monkeypatch, tick: float = 0.1) -> None:
    """TimeBudget's seconds advance `tick` each time it reads them, whatever the machine's speed: with a budget
    of 0.13 minutes the probe plans 52 steps (11 epochs, validation charged), more than the recipe's 10 epochs."""
    counter = itertools.count(1)
    clock = SimpleNamespace(perf_counter=lambda: next(counter) * tick)
    monkeypatch.setattr(budget, "time", clock)  # the budget's clock only: the run's own seconds stay real


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

    fake_clock(monkeypatch)
    res = train(**common, time_budget=0.13, name="planned")
    cfg = yaml.safe_load(open(tmp_path / "runs/planned/config.yaml"))
    assert res["steps"] == 52 > 10 * PER_EPOCH  # the recipe's 10 epochs were not the limit: the budget was
    assert res["steps"] == cfg["max_steps"] == res["time_budget"]["planned_steps"]
    assert cfg["epochs"] == res["epochs"] == math.ceil(res["steps"] / PER_EPOCH) == res["time_budget"]["planned_epochs"]
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


def test_epochs_given_with_a_budget_stay_a_cap(tmp_path, common, monkeypatch):
    from imgclf import train

    fake_clock(monkeypatch)  # the same budget and speed that plan 11 epochs above
    res = train(**common, time_budget=0.13, epochs=3, name="capped")
    cfg = yaml.safe_load(open(tmp_path / "runs/capped/config.yaml"))
    assert res["steps"] == cfg["max_steps"] == 3 * PER_EPOCH and cfg["epochs"] == res["epochs"] == 3


def test_a_cosine_schedule_ends_at_the_planned_epochs(tmp_path, make_folder, monkeypatch):
    from imgclf import train

    fake_clock(monkeypatch)  # 0.075 minutes at this clock: 41 epochs of one step fit
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4, n_val=1, size=16)
    opts = dict(data=str(data), model="smallcnn", batch_size=8, workers=0, out=str(tmp_path / "runs"))
    res = train(**opts, scheduler="cosine", name="cosine", time_budget=0.075, save_every=0)
    assert res["epochs"] > 30  # the default 30 epochs were not the limit
    assert yaml.safe_load(open(tmp_path / "runs/cosine/config.yaml"))["epochs"] == res["epochs"] == res["steps"]
    assert max(final_lrs(tmp_path / "runs/cosine/last.pt")) == pytest.approx(0.0, abs=1e-9)  # at T_max: planned
