"""A run resolved once (training/plan.py): the plan is frozen and checked before any work, `decide` completes it,
and a Trainer built from a test on tiny data trains exactly as `imgclf.train` does."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from conftest import TINY_RUN
from conftest import metrics_rows as _rows
from conftest import train_tiny as _train

from imgclf.core.callback import Callback
from imgclf.core.errors import UsageError
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.api import preflight
from imgclf.training.options import make_config
from imgclf.training.plan import decide, resolve
from imgclf.training.rundata import open_run_data
from imgclf.training.rundir import RunDir
from imgclf.training.state import build_state
from imgclf.training.trainer import Trainer


@pytest.fixture
def data(tmp_path, make_folder):
    return str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))


def _options(tmp_path, folder, name, **kw) -> dict:
    return {**TINY_RUN, "lr": 0.05, "data": folder, "out": str(tmp_path / "runs"), "name": name, **kw}


def test_the_plan_is_frozen_checked_and_filled_before_any_work(tmp_path, data):
    plan = resolve(_options(tmp_path, data, "p", lr=None, optimizer="adamw"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.run_path = "elsewhere"
    assert not plan.decided and not plan.resumed
    assert plan.cfg.lr == 1e-3 and plan.cfg.weight_decay == 0.05  # adamw's defaults
    assert os.path.isabs(plan.cfg.data) and plan.device == torch.device("cpu")
    assert plan.cfg.explicit >= {"optimizer", "data"} and "weight_decay" not in plan.cfg.explicit
    for bad, message in (
        ({"monitor": "val_robust_acc"}, "add --adv-train"),
        ({"adv_train": "fgsm", "adv_eps": "eight"}, "is not a number"),
        ({"data": None}, "no data given"),
    ):
        with pytest.raises(UsageError, match=message):
            resolve(_options(tmp_path, data, "p", **bad))
    assert not (tmp_path / "runs").exists()  # nothing read, nothing written


def test_decide_completes_the_plan_with_the_data_and_the_model(tmp_path, data):
    plan = resolve(_options(tmp_path, data, "d", freeze="backbone", feature_cache=False, adv_train="fgsm"))
    assert plan.adv_eps == pytest.approx(8 / 255) and plan.adv_step is None
    run_data = open_run_data(plan)
    plan, model = decide(plan, run_data)
    assert plan.decided and plan.run_path == os.path.join(str(tmp_path / "runs"), "d")
    assert plan.cfg.img_size == 16 == run_data.preprocess.img_size and plan.precision == "fp32"
    assert plan.frozen and not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    assert (plan.per_epoch, plan.total_steps) == (5, 5 * plan.cfg.epochs)  # 36 images in batches of 8
    assert not (tmp_path / "runs" / "d").exists()  # named, not made


def test_a_name_that_is_taken_is_refused_by_train_and_preflight_alike(tmp_path, data):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "x").write_text("")
    with pytest.raises(UsageError, match="already exists"):
        resolve(_options(tmp_path, data, "taken"))
    with pytest.raises(UsageError, match="already exists"):
        preflight(make_config(_options(tmp_path, data, "taken")), 2)


def test_a_trainer_built_from_a_test_trains_as_imgclf_train_does(tmp_path, data):
    seen = []

    class Seen(Callback):
        def on_validation_end(self, trainer, row):
            seen.append(row["epoch"])

    plan = resolve(_options(tmp_path, data, "direct", epochs=2))
    run_data = open_run_data(plan)
    plan, model = decide(plan, run_data)
    state = build_state(plan, run_data, model)
    with RunDir(plan.run_path) as run_dir:
        res = Trainer(plan, state, run_data, run_dir, [Seen()]).fit()
    assert seen == [1, 2] and res["epochs"] == 2 and res["run_dir"] == plan.run_path
    assert {"best.pt", "last.pt", "results.json", "metrics.csv", "config.yaml"} <= set(os.listdir(plan.run_path))

    same = _train(tmp_path, data, "api", epochs=2)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(res["run_dir"])) == drop(_rows(same["run_dir"]))
    a = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))["state_dict"]
    b = load_checkpoint(os.path.join(same["run_dir"], "last.pt"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_trainer_refuses_a_plan_not_yet_decided(tmp_path, data):
    plan = resolve(_options(tmp_path, data, "undecided"))
    with pytest.raises(ValueError, match="decide"):
        Trainer(plan, None, None, None)
