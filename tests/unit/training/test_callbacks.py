"""The callback contract (imgclf.core.callback): order, state keys and their refusal, the built-in callbacks'
keys and orders, and the example of docs/architecture.md (a callback that logs the learning rate each epoch)."""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import train_tiny as _train
from torch import nn

from imgclf.core.callback import DEFAULT_ORDER, Callback, arrange
from imgclf.core.errors import UsageError
from imgclf.models.airnet import WhiteningBiasWarmup, WhiteningFromData
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.callbacks import (
    EarlyStopping,
    FreezeThenUnfreeze,
    Histograms,
    Lookahead,
    OverfitWarning,
    TimeBudget,
)
from imgclf.training.callbacks.curriculum import Curriculum


@pytest.fixture
def data(tmp_path, make_folder):
    return str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))


class LogLearningRate(Callback):
    """The first parameter group's learning rate at the start of every epoch, in the run's log (train.log)."""

    order = 150  # after the built-in callbacks that shape a step, before checkpointing (900)

    def on_epoch_start(self, trainer):
        lr = trainer.state.optimizer.param_groups[0]["lr"]
        trainer.info("epoch %d: lr %.4g", trainer.state.epoch + 1, lr)


def test_the_learning_rate_logging_example_works(tmp_path, data):
    res = _train(tmp_path, data, "loglr", epochs=3, step_size=1, gamma=0.5, callbacks=[LogLearningRate()])
    lines = open(os.path.join(res["run_dir"], "train.log")).read().splitlines()
    said = [line.split(" INFO ")[1] for line in lines if ": lr " in line]
    assert said == ["epoch 1: lr 0.05", "epoch 2: lr 0.025", "epoch 3: lr 0.0125"]
    with open(os.path.join(res["run_dir"], "metrics.csv")) as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == [0.05, 0.025, 0.0125]


def test_callbacks_run_by_order_then_as_registered():
    class Early(Callback):
        order = 5

    class Mine(Callback):
        pass

    class Other(Callback):
        pass

    class Late(Callback):
        order = 950

    arranged = arrange([Late(), Mine(), Early(), Other()])
    assert [type(cb).__name__ for cb in arranged] == ["Early", "Mine", "Other", "Late"]
    assert Mine().order == DEFAULT_ORDER == 100


def test_a_state_key_is_the_class_name_unless_set_and_a_duplicate_is_refused_in_one_line():
    class Counter(Callback):
        def state_dict(self):
            return {"n": 1}

    class Renamed(Counter):
        state_key = "counter_2"

    class Named(Counter):  # written before state_key: its `name` was the key its state was saved under
        name = "my_counter"

    assert Counter().state_key == "Counter" and Renamed().state_key == "counter_2"
    assert Named().state_key == "my_counter"
    assert len(arrange([Counter(), Renamed()])) == 2
    with pytest.raises(UsageError) as e:
        arrange([Counter(), Counter()])
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "'Counter'" in message and "state_key" in message


def test_the_built_in_callbacks_keep_the_state_keys_checkpoints_hold():
    """A last.pt written before the contract had them resumes: each state is found under its old key."""
    keys = {
        TimeBudget(1.0, 8): "time_budget",
        Lookahead(nn.Linear(2, 2)): "lookahead",
        EarlyStopping(2, "val_acc"): "early_stopping",
        FreezeThenUnfreeze(1, []): "freeze_then_unfreeze",
        Histograms(1): "histograms",
        OverfitWarning("fgsm"): "adv_overfit_warning",
        Curriculum(None, "easy-first", "linear", 0.2, 0.8): "curriculum",
        WhiteningFromData(): "airnet_whitening",
        WhiteningBiasWarmup(): "airnet_whitening_bias",
    }
    assert {cb: cb.state_key for cb in keys} == keys


def test_a_run_calls_the_built_in_callbacks_in_their_order_and_saves_their_states(tmp_path, data):
    seen = []

    class Look(Callback):
        def on_fit_start(self, trainer):
            seen.extend((type(cb).__name__, cb.order) for cb in trainer.callbacks)

    opts = dict(ema=True, lookahead=True, patience=3, log_histograms=5, mixup=0.2)
    res = _train(tmp_path, data, "order", epochs=1, callbacks=[Look()], **opts)
    names = [n for n, _ in seen]
    assert names == [
        "EMA",
        "Mixing",
        "Lookahead",
        "EarlyStopping",
        "Histograms",
        "Look",
        "Checkpointing",
        "FinalReport",
    ]
    assert [o for _, o in seen] == sorted(o for _, o in seen)
    saved = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))["train_state"]["callbacks"]
    assert set(saved) == {"lookahead", "early_stopping", "histograms"}


def test_two_of_your_callbacks_with_one_key_are_refused_before_any_work(tmp_path, data):
    class Same(Callback):
        pass

    with pytest.raises(UsageError, match="state key 'Same'"):
        _train(tmp_path, data, "dup", epochs=1, callbacks=[Same(), Same()])
    assert not (tmp_path / "runs").exists()


def test_a_callback_with_a_built_in_key_is_refused_before_the_run_folder_is_made(tmp_path, data):
    class MyLookahead(Callback):
        state_key = "lookahead"

    with pytest.raises(UsageError, match="state key 'lookahead'"):
        _train(tmp_path, data, "clash", epochs=1, lookahead=True, callbacks=[MyLookahead()])
    assert not (tmp_path / "runs" / "clash").exists()


def test_a_callbacks_results_join_results_json_without_replacing_the_runs_own(tmp_path, data):
    class Adds(Callback):
        def on_fit_end(self, trainer):
            trainer.results |= {"mine": 1, "best_epoch": 99}

    res = _train(tmp_path, data, "adds", epochs=2, callbacks=[Adds()])
    with open(os.path.join(res["run_dir"], "results.json")) as f:
        written = json.load(f)
    assert written["mine"] == res["mine"] == 1
    assert written["best_epoch"] == res["best_epoch"] != 99
    assert "results.json keeps its own ['best_epoch']" in open(os.path.join(res["run_dir"], "train.log")).read()
