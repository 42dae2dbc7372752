"""The training engine: options known as set, the Trainer's tools (EMA, early stopping, freeze-then-unfreeze,
gradient accumulation and clipping, histograms and the anomaly stop), and a library that leaves the caller's
process as it found it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import metrics_rows as _rows
from conftest import tiny_argv
from conftest import train_tiny as _train
from torch import nn

import imgclf
from imgclf.core.errors import TrainingDiverged
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.options import TrainConfig


@pytest.fixture
def data(tmp_path, make_folder):
    return str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))


def _tiny_cli(data, tmp_path, name) -> list[str]:
    """The flags of _train's run, for main([...])."""
    return [*tiny_argv(data=data, out=tmp_path / "runs", name=name), "-q"]


# ------------------------------------------------------------------------------------------ options known as set


def test_an_option_set_to_its_default_value_is_still_set(tmp_path, data):
    """TrainConfig(recipe="fast", epochs=30): `epochs` was given, so the recipe's 10 must not replace it."""
    cfg = TrainConfig(
        recipe="fast",
        epochs=30,
        data=data,
        workers=0,
        out=str(tmp_path / "runs"),
        name="r",
        batch_size=8,
        max_steps=1,
        precision="fp32",
    )
    assert cfg.explicit >= {"recipe", "epochs"} and "lr" not in cfg.explicit
    res = imgclf.train(cfg)
    saved = yaml.safe_load(open(os.path.join(res["run_dir"], "config.yaml")))
    assert saved["epochs"] == 30 and saved["model"] == "airnet_small" and saved["batch_size"] == 8
    assert "epochs" in res["options_set"] and "model" not in res["options_set"]


def test_replace_adds_to_the_options_set():
    cfg = TrainConfig(epochs=3).replace(lr=0.1)
    assert cfg.explicit == {"epochs", "lr"} and cfg.lr == 0.1


# ------------------------------------------------------------------------------------------ the process is left alone


def test_training_leaves_logging_umask_and_socket_timeout_as_they_were(tmp_path, data):
    root, pkg = logging.getLogger(), logging.getLogger("imgclf")
    before = (
        list(root.handlers),
        root.level,
        list(pkg.handlers),
        pkg.level,
        pkg.propagate,
        [h.level for h in root.handlers],
        os.umask(0o022),
        socket.getdefaulttimeout(),
    )
    os.umask(before[6])
    _train(tmp_path, data, "quiet", epochs=1)
    after = (
        list(root.handlers),
        root.level,
        list(pkg.handlers),
        pkg.level,
        pkg.propagate,
        [h.level for h in root.handlers],
        os.umask(0o022),
        socket.getdefaulttimeout(),
    )
    os.umask(after[6])
    assert after == before


def test_import_changes_neither_umask_nor_matplotlib_backend():
    code = (
        "import os, matplotlib; os.umask(0o027); b = matplotlib.get_backend(); import imgclf, imgclf.training.api, "
        "imgclf.evaluation.plots, imgclf.cli.main; m = os.umask(0); print(oct(m), b == matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0o27", "True"]


def test_train_log_has_the_runs_story_whatever_the_callers_log_level(tmp_path, data):
    pkg = logging.getLogger("imgclf")
    old = pkg.level
    pkg.setLevel(logging.ERROR)
    try:
        res = _train(tmp_path, data, "story", epochs=2)
    finally:
        pkg.setLevel(old)
    text = open(os.path.join(res["run_dir"], "train.log")).read()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "best epoch" in text and "precision: fp32" in text


# ------------------------------------------------------------------------------------------ the tools


def test_ema_is_evaluated_every_epoch_and_best_pt_says_which_weights(tmp_path, data):
    res = _train(tmp_path, data, "ema", epochs=3, ema=True, ema_decay=0.5)
    rows = _rows(res["run_dir"])
    assert len(rows) == 3 and all(r["ema_val_acc"] != "" for r in rows)
    best = load_checkpoint(os.path.join(res["run_dir"], "best.pt"))
    assert best["weights"] in ("model", "ema") and best["weights"] == res["best_weights"]
    row = rows[best["epoch"] - 1]
    column = "ema_val_acc" if best["weights"] == "ema" else "val_acc"
    assert abs(best["metrics"]["accuracy"] - float(row[column])) < 1e-6  # the metrics of the weights it holds
    last = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))
    assert last["train_state"]["ema"]["n_averaged"] > 0
    # evaluate gives back what the run reported for the weights it kept
    m = imgclf.evaluate(os.path.join(res["run_dir"], "best.pt"), split="val", workers=0, plots=False)
    assert abs(m["accuracy"] - res["best"]["accuracy"]) < 1e-9


def test_ema_weights_are_the_average_of_the_steps():
    from imgclf.training.build import make_ema

    m = nn.Linear(2, 1, bias=False)
    ema = make_ema(m, decay=0.5, warmup=0)
    with torch.no_grad():
        m.weight.fill_(0.0)
        ema.update_parameters(m)  # the first update copies
        m.weight.fill_(4.0)
        ema.update_parameters(m)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 2.0))
    warm = make_ema(m, decay=0.9, warmup=10)
    with torch.no_grad():
        warm.update_parameters(m)
        m.weight.fill_(0.0)
        warm.update_parameters(m)  # n_averaged 1: decay 0.9 * 1/10 = 0.09
    assert torch.allclose(warm.module.weight, torch.full((1, 2), 4.0 * 0.09))


def test_patience_stops_the_run_and_says_why(tmp_path, data):
    # a learning rate too small to change anything: validation never improves after the first epoch
    res = _train(tmp_path, data, "patient", epochs=10, lr=1e-12, patience=2, monitor="val_loss")
    assert res["epochs"] == 3 and "early stopping" in res["stopped_early"] and "val_loss" in res["stopped_early"]
    assert "early stopping" in open(os.path.join(res["run_dir"], "train.log")).read()


def test_freeze_epochs_train_the_head_first_then_everything_at_the_backbone_scale(tmp_path, data):
    from imgclf.models.registry import build_model

    runs = {}
    for epochs in (1, 2):
        res = _train(tmp_path, data, f"fe{epochs}", epochs=epochs, freeze_epochs=1, backbone_lr_scale=0.1)
        runs[epochs] = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))
    torch.manual_seed(0)
    start = build_model("test_tiny", 3).state_dict()
    after1, after2 = runs[1]["state_dict"], runs[2]["state_dict"]
    body = [k for k in start if not k.startswith("fc.") and start[k].is_floating_point()]
    assert all(torch.equal(after1[k], start[k]) for k in body), "epoch 1: the backbone must not move"
    assert not torch.equal(after1["fc.weight"], start["fc.weight"])
    assert any(not torch.equal(after2[k], after1[k]) for k in body), "epoch 2: the backbone trains"
    groups = runs[2]["train_state"]["optimizer"]["param_groups"]
    assert sorted(g["lr"] for g in groups) == pytest.approx([0.005, 0.05])


def test_freeze_epochs_refuses_a_freeze_option_beside_it(tmp_path, data):
    with pytest.raises(imgclf.core.errors.UsageError, match="--freeze-epochs"):
        _train(tmp_path, data, "both", epochs=2, freeze_epochs=1, freeze="backbone")


def test_accumulated_gradients_equal_one_big_batch():
    from imgclf.training.trainer import train_steps

    torch.manual_seed(0)
    x, y = torch.randn(8, 4, 1, 1), torch.randint(0, 3, (8,))
    base = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    results = []
    for batch, accumulate in ((8, 1), (4, 2), (2, 4)):
        m = _copy(base)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, 8, batch)]
        train_steps(
            m,
            batches,
            nn.CrossEntropyLoss(),
            opt,
            torch.amp.GradScaler("cpu", enabled=False),
            torch.device("cpu"),
            None,
            channels_last=False,
            accumulate=accumulate,
        )
        results.append(m[1].weight.detach().clone())
    torch.testing.assert_close(results[1], results[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[2], results[0], atol=1e-6, rtol=1e-5)


def test_accumulate_counts_optimizer_steps(tmp_path, data):
    res = _train(tmp_path, data, "acc", epochs=2, batch_size=4, accumulate=2)
    assert res["steps"] == 2 * 5  # 36 images / 4 = 9 batches an epoch: 4 steps of 2 and one of 1


def test_clip_grad_bounds_the_step():
    from imgclf.training.trainer import train_steps

    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    before = m[1].weight.detach().clone()
    x, y = 1000 * torch.randn(8, 4, 1, 1), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    train_steps(
        m,
        [(x, y)],
        nn.CrossEntropyLoss(),
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
        None,
        channels_last=False,
        clip_grad=0.5,
    )
    moved = torch.cat([(m[1].weight - before).flatten(), m[1].bias.flatten() - _copy_bias(m)])
    assert moved.norm() <= 0.5 + 1e-5


def _copy(m):
    import copy

    return copy.deepcopy(m)


def _copy_bias(m):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))[1].bias.detach().flatten()


def test_histograms_are_written_to_tensorboard(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = _train(tmp_path, data, "hist", epochs=1, log_histograms=2)
    acc = EventAccumulator(res["run_dir"], size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert any(t.startswith("grad/fc.") for t in tags) and any(t.startswith("activation/") for t in tags)
    assert "grad_norm/total" in acc.Tags()["scalars"]


def test_a_diverging_run_stops_with_one_line_naming_step_and_layer(tmp_path, data):
    """With --log-histograms a non-finite gradient stops the run: one line naming the step and the layer, and
    last.pt stays the last good epoch's."""
    from imgclf.core.callback import Callback

    class Poison(Callback):  # in epoch 2, one weight of the first conv becomes NaN
        def on_step_start(self, trainer):
            if trainer.state.epoch == 1:
                with torch.no_grad():
                    next(trainer.step_model.parameters())[0, 0, 0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"step 6: the loss is nan"):
        _train(tmp_path, data, "diverge", epochs=3, log_histograms=1, callbacks=[Poison()])
    run = tmp_path / "runs/diverge"
    assert load_checkpoint(str(run / "last.pt"))["epoch"] == 1
    assert all(
        torch.isfinite(v).all()
        for v in load_checkpoint(str(run / "last.pt"))["state_dict"].values()
        if v.is_floating_point()
    )
    assert "ERROR step 6: the loss is nan" in (run / "train.log").read_text()


def test_the_cli_reports_a_diverging_run_in_one_line(tmp_path, data, capsys):
    from imgclf.cli.main import main

    code = main(["train", *_tiny_cli(data, tmp_path, "boom"), "--lr", "1e30", "--epochs", "2", "--log-histograms", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("imgclf: error: step ")
    assert not os.path.exists(tmp_path / "runs/boom/last.pt")


# ------------------------------------------------------------------------------------------ tools from the tools branch


def test_mixup_cutmix_and_sampler_balance_train_and_record(tmp_path, make_folder):
    data = make_folder(tmp_path / "lt", classes=("a", "b", "c"), n=12, n_val=4, size=16)
    for p in sorted((data / "train" / "b").iterdir())[2:]:  # 'b' has 2 training images, the others 12: ratio 6
        p.unlink()
    res = _train(tmp_path, str(data), "mix", epochs=2, mixup=0.2, cutmix=1.0, balance="auto", freeze="backbone")
    assert res["balance"] == "weights" and res["epochs"] == 2
    log_text = open(os.path.join(res["run_dir"], "train.log")).read()
    assert "class balance: auto" in log_text and "frozen-feature cache" not in log_text  # mixing needs images
    res = _train(tmp_path, str(data), "sampler", epochs=1, balance="sampler")
    assert res["balance"] == "sampler"


def test_lr_auto_runs_the_range_test_first_and_trains_at_its_suggestion(tmp_path, data):
    res = _train(tmp_path, data, "auto", epochs=1, lr="auto")
    saved = yaml.safe_load(open(os.path.join(res["run_dir"], "config.yaml")))
    found = __import__("json").load(open(os.path.join(res["run_dir"], "lr_find.json")))
    assert isinstance(saved["lr"], float) and saved["lr"] == pytest.approx(found["suggestion"])
    assert os.path.exists(os.path.join(res["run_dir"], "lr_find.png"))


def test_lr_find_cli_prints_a_suggestion_and_saves_the_curve(tmp_path, data, capsys):
    from imgclf.cli.main import main

    code = main(["lr-find", *_tiny_cli(data, tmp_path, "lrf"), "--steps", "40"])
    out = capsys.readouterr().out
    assert code == 0 and "suggested lr: " in out
    assert (tmp_path / "runs/lrf/lr_find.png").exists() and (tmp_path / "runs/lrf/lr_find.json").exists()


def test_compile_trains_the_same_model_and_logs_the_compile_time(tmp_path, data):
    """--compile: torch.compile for the training steps (inductor; needs a C compiler, as torch does); the
    checkpoint is the plain model's, and its first-epoch time, compilation included, is logged."""
    res = _train(tmp_path, data, "compiled", epochs=2, compile=True)
    text = open(os.path.join(res["run_dir"], "train.log")).read()
    assert "torch.compile: the first epoch took" in text and "epoch 2/2" in text
    ck = load_checkpoint(os.path.join(res["run_dir"], "best.pt"))
    assert not any(k.startswith("_orig_mod.") for k in ck["state_dict"])
    m = imgclf.evaluate(os.path.join(res["run_dir"], "best.pt"), split="val", workers=0, plots=False)
    assert abs(m["accuracy"] - res["best"]["accuracy"]) < 1e-9


def test_lookahead_and_ema_average_the_head_on_the_frozen_feature_cache(tmp_path, data):
    """--freeze backbone trains the head on cached features: lookahead and the EMA average what trains."""
    res = _train(
        tmp_path, data, "head", epochs=2, freeze="backbone", lookahead=True, ema=True, ema_warmup=0, ood_bank=10
    )
    assert "frozen-feature cache built" in open(os.path.join(res["run_dir"], "train.log")).read()
    # the out-of-distribution fit runs the whole model on images: a bank of 10 of the training images
    ood = load_checkpoint(os.path.join(res["run_dir"], "best.pt"))["ood"]
    assert len(ood["bank"]) == ood["record"]["bank_size"] == 10 and res["ood"] == ood["record"]
    assert set(ood["record"]["thresholds"]) == {"msp", "energy", "knn"}
    last = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))
    assert set(last["train_state"]["callbacks"]["lookahead"]) == {"weight", "bias"}  # the head's own tensors
    resumed = imgclf.train(resume=os.path.join(res["run_dir"], "last.pt"), epochs=3, workers=0)
    assert resumed["epochs"] == 3
    assert yaml.safe_load(open(os.path.join(res["run_dir"], "config.yaml")))["epochs"] == 3


def test_a_non_finite_loss_stops_any_run_in_one_line(tmp_path, data, capsys):
    """Issue 22 (3): `train --lr 1e9` died in its first validation with scikit-learn's "Input contains NaN" and
    no checkpoint. A non-finite loss now stops any run (no --log-histograms needed) at that step, before it
    changes the weights: one line naming the step, the last good checkpoint (or that there is none) and a lower
    --lr; exit 1 (the command was valid: the optimisation went wrong)."""
    from imgclf.cli.main import main

    code = main(["train", *_tiny_cli(data, tmp_path, "boom"), "--lr", "1e9", "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("imgclf: error: step ") and ": the loss is nan, in epoch 1; the run stopped; " in err[0]
    assert "no checkpoint was saved: it diverged in its first epoch" in err[0]
    assert err[0].endswith("train with a lower --lr (this run's was 1e+09), or add --clip-grad")
    assert not os.path.exists(tmp_path / "runs/boom/last.pt")


def test_a_run_that_diverges_later_keeps_its_last_good_epoch(tmp_path, data):
    """A loss that goes non-finite in epoch 2 names the last good checkpoint, last.pt of epoch 1, which holds
    finite weights; train.log has the line."""
    from imgclf.core.callback import Callback

    class Poison(Callback):  # in epoch 2, one weight of the first conv becomes NaN
        def on_step_start(self, trainer):
            if trainer.state.epoch == 1:
                with torch.no_grad():
                    next(trainer.step_model.parameters())[0, 0, 0, 0] = float("nan")

    run = tmp_path / "runs/later"
    with pytest.raises(TrainingDiverged, match=r"^step 6: the loss is nan, in epoch 2; the run stopped; ") as e:
        _train(tmp_path, data, "later", epochs=3, callbacks=[Poison()])
    assert f"the last good checkpoint is {run / 'last.pt'} (epoch 1)" in str(e.value)
    last = load_checkpoint(str(run / "last.pt"))
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert "ERROR step 6: the loss is nan" in (run / "train.log").read_text()


def test_non_finite_weights_after_a_finite_last_step_stop_at_validation(tmp_path, data):
    """The last step's loss was finite but the weights it left are not: validation stops the run in one line
    (it was scikit-learn's ValueError)."""
    from imgclf.core.callback import Callback

    class PoisonLast(Callback):
        def on_train_epoch_end(self, trainer):
            with torch.no_grad():
                next(trainer.step_model.parameters()).fill_(float("inf"))

    with pytest.raises(TrainingDiverged, match=r"^after epoch 1: the model's outputs on the validation images are"):
        _train(tmp_path, data, "late", epochs=2, callbacks=[PoisonLast()])
