"""Multi-label training (training/multilabel.py): the task inferred from the manifest and recorded everywhere,
binary cross-entropy with per-label positive weights and smoothing, --balance for labels, the thresholds fitted on
validation at each checkpoint and stored, the refusals of options that make no sense, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import MULTILABEL_RUN, TINY_RUN, metrics_rows, tiny_argv, usage_error

from imgclf.core.callback import Callback
from imgclf.core.errors import Preempted, UsageError
from imgclf.evaluation.multilabel import fit_thresholds, parse_goal
from imgclf.infer.logits import infer
from imgclf.models.checkpoint import load_checkpoint, load_weights, task_of
from imgclf.training.api import train as api_train
from imgclf.training.build import make_model
from imgclf.training.multilabel import (
    POS_WEIGHT_CAP,
    MultiLabelLoss,
    bce_per_image,
    choose_multilabel_balance,
    pos_weights,
    task_loss,
)
from imgclf.training.options import make_config
from imgclf.training.plan import resolve
from imgclf.training.preempt import StopRequest
from imgclf.training.rundata import open_run_data


def test_a_multilabel_run_records_its_task_and_fitted_thresholds(multilabel_run):
    results = json.loads((multilabel_run / "results.json").read_text())
    assert results["task"] == "multilabel" and results["monitor"] == "val_mAP"
    assert results["threshold_goal"] == "f1" and len(results["thresholds"]) == 3
    best, half = results["best"], results["best_at_0.5"]
    assert set(best["per_label"]) == {"blue", "green", "red"} and best["thresholds"] == results["thresholds"]
    assert half["thresholds"] == [0.5, 0.5, 0.5] and "loss" in best
    # each label's threshold maximises its F1 on validation, so the mean of them is at least 0.5's
    assert best["macro_f1"] >= half["macro_f1"] - 1e-9
    ckpt = load_checkpoint(str(multilabel_run / "best.pt"))
    assert task_of(ckpt) == ("multilabel", pytest.approx(results["thresholds"]))
    assert ckpt["threshold_goal"] == "f1" and ckpt["config"]["task"] == "multilabel"
    assert task_of(load_checkpoint(str(multilabel_run / "last.pt")))[0] == "multilabel"
    assert yaml.safe_load((multilabel_run / "config.yaml").read_text())["task"] == "multilabel"
    assert (multilabel_run / "curves.png").stat().st_size > 0
    rows = metrics_rows(multilabel_run)
    assert len(rows) == 2 and all(r["val_mAP"] and r["ema_val_mAP"] and "val_acc" not in r for r in rows)
    log = (multilabel_run / "train.log").read_text()
    assert (
        "task: multilabel, inferred from the data; loss binary cross-entropy summed over the labels with pos_weight"
        in log
    )


def test_the_thresholds_are_the_fit_of_best_pt_on_validation(multilabel_run, multilabel_csv, tmp_path):
    """best.pt's thresholds are --threshold's fit to its own sigmoid scores on the run's validation split."""
    ckpt = load_checkpoint(str(multilabel_run / "best.pt"))
    plan = resolve(None, {**TINY_RUN, "data": str(multilabel_csv), "out": str(tmp_path)})
    data = open_run_data(plan)
    model = make_model(plan.cfg.resolved(img_size=16), 3, plan.device)
    load_weights(model, ckpt, "best.pt")
    logits, targets = infer(model, data.val.batches(), plan.device, None)
    want, _ = fit_thresholds(torch.sigmoid(logits).numpy(), targets.numpy(), parse_goal("f1"))
    assert ckpt["thresholds"] == pytest.approx(want, abs=1e-6)


def test_the_loss_is_bce_with_positive_weights_and_smoothing():
    targets = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
    assert pos_weights(targets).tolist() == [1.0, 1.0, pytest.approx(1 / 3)]  # 2/2; no positive: 1; 1/3
    rare = np.zeros((500, 1)), np.zeros((500, 1))
    rare[0][0, 0] = 1
    assert pos_weights(rare[0]).item() == POS_WEIGHT_CAP  # 499 negatives per positive, capped

    cfg = make_config({"task": "multilabel", "pos_weight": "auto", "label_smoothing": 0.2})
    loss = task_loss(cfg, targets, torch.device("cpu"))
    assert isinstance(loss, MultiLabelLoss)
    logits, y = torch.randn(4, 3), torch.as_tensor(targets, dtype=torch.float32)
    want = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weights(targets))(logits, y * 0.8 + 0.1)
    assert float(loss(logits, y)) == pytest.approx(float(want) * 3)  # summed over the 3 labels, mean over images
    single = task_loss(make_config({"task": "single", "label_smoothing": 0.1}), None, torch.device("cpu"))
    assert isinstance(single, torch.nn.CrossEntropyLoss)


def test_the_loss_moves_each_logit_as_cross_entropy_does():
    """Each logit's gradient is (sigmoid - target) / images, not also divided by the labels: a recipe's learning rate
    and weight decay mean for a multi-label image what they mean for a single-label one."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.0, 0.0, 4.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    loss = MultiLabelLoss()(logits, y)
    loss.backward()
    assert torch.allclose(logits.grad, (torch.sigmoid(logits.detach()) - y) / 2)
    assert bce_per_image(logits.detach(), y) == pytest.approx(loss.item())


@pytest.mark.parametrize(
    "counts, mode",
    [((10, 9), "none"), ((12, 4), "weights"), ((30, 3), "sampler")],
)
def test_balance_auto_decides_from_the_labels_counts(counts, mode):
    targets = np.zeros((max(counts), 2), dtype=np.uint8)
    for k, n in enumerate(counts):
        targets[:n, k] = 1
    balance, reason = choose_multilabel_balance("auto", targets)
    assert balance == mode and "label" in reason


def test_the_fast_recipe_leaves_label_smoothing_out_for_multilabel(multilabel_csv, tmp_path):
    base = {"data": str(multilabel_csv), "recipe": "fast", "out": str(tmp_path)}
    assert resolve(None, base).cfg.label_smoothing == 0.0
    assert resolve(None, {**base, "label_smoothing": 0.1}).cfg.label_smoothing == 0.1  # given: kept
    assert resolve(None, {**base, "task": "single", "data": "digits"}).cfg.label_smoothing == 0.2
    assert not list(tmp_path.iterdir())  # resolved only: no run folder


@pytest.mark.parametrize(
    "data, extra, says",
    [
        ("ml", {"adv_train": "fgsm"}, "--adv-train's attacks"),
        ("ml", {"curriculum": "easy-first", "balance": "weights"}, "--curriculum's difficulties"),
        ("ml", {"calibrate": True}, "one per label"),
        ("ml", {"monitor": "val_acc"}, "--monitor val_acc is an accuracy"),
        ("ml", {"balance": "weights", "pos_weight": "none"}, "--balance weights is --pos-weight auto"),
        ("ml", {"threshold": "precision=2"}, "--threshold 'precision=2' is not a goal"),
        ("ml", {"task": "single"}, "--task single was given"),
        ("ml", {"adv_train": "pgd", "nproc": 2}, "--adv-train's attacks"),  # before torchrun starts its ranks
        ("folder", {"task": "multilabel"}, "--task multilabel needs a multi-label CSV"),
        ("folder", {"pos_weight": "auto"}, "--pos-weight is for multi-label runs"),
        ("folder", {"monitor": "val_mAP"}, "--monitor val_mAP is a multi-label metric"),
    ],
)
def test_options_that_make_no_sense_are_refused_in_one_line(
    capsys, multilabel_csv, tiny_data, tmp_path, data, extra, says
):
    where = str(multilabel_csv if data == "ml" else tiny_data)
    line = usage_error(capsys, ["train", "--data", where, *tiny_argv(epochs=1, out=tmp_path / "runs", **extra)])
    assert says in line
    assert not (tmp_path / "runs").exists()


def test_a_bad_goal_is_refused_before_any_work(multilabel_csv, tmp_path):
    with pytest.raises(UsageError, match="not a goal"):
        resolve(None, {"data": str(multilabel_csv), "threshold": "best", "out": str(tmp_path)})


class StopAt(Callback):
    """Asks the run to stop (as SIGTERM does) after optimisation step `step`."""

    def __init__(self, request: StopRequest, step: int):
        self.request, self.step = request, step

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            self.request.set()


def test_a_run_stopped_inside_an_epoch_resumes_as_the_uninterrupted_one(multilabel_csv, tmp_path):
    """Stopped after step 5 (inside epoch 2, of steps 4 to 6), then --resume: the rows (train_acc's per-label sums
    included), weights and thresholds of the run that never stopped (the EMA, mixup and cutmix of multi-hot targets
    and the per-label weights included)."""
    stop = StopRequest()
    options = {**TINY_RUN, **MULTILABEL_RUN, "data": str(multilabel_csv), "out": str(tmp_path), "name": "r"}
    # the uninterrupted run trained here, beside the stopped one: the session's `multilabel_run` may have been
    # trained under other process-wide settings (torch's threads, set by earlier tests), and bit-equal weights
    # need the same ones
    multilabel_run = Path(api_train({**options, "name": "full"})["run_dir"])
    with pytest.raises(Preempted, match="stopped at step 5"):
        api_train(options, callbacks=[StopAt(stop, 5)], stop=stop)
    run = tmp_path / "r"
    api_train(resume=str(run / "last.pt"))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(metrics_rows(run)) == drop(metrics_rows(multilabel_run))
    ours, full = load_checkpoint(str(run / "last.pt")), load_checkpoint(str(multilabel_run / "last.pt"))
    assert all(torch.equal(ours["state_dict"][k], full["state_dict"][k]) for k in full["state_dict"])
    assert ours["thresholds"] == full["thresholds"]
