"""Curriculum learning (--curriculum, imgclf score): the pacing functions and the curriculum draw, the
difficulty files, exact resume, and the usage errors of both --curriculum and --adv-train."""

from __future__ import annotations

import csv
import os
import shutil

import pytest
import torch
from conftest import train_tiny as _train

import imgclf
from imgclf.cli.main import main
from imgclf.core.errors import DataError
from imgclf.data.sources import open_source
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.callbacks.curriculum import Curriculum
from imgclf.training.curriculum import PacedOrder, pace, ranking, read_difficulty


@pytest.fixture
def data(tmp_path, make_folder):
    return str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))


def _same_weights(a: str, b: str) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_pacing_functions_start_at_b_and_reach_all_at_a():
    p = torch.tensor([0.0, 0.2, 0.4, 0.8, 1.0], dtype=torch.float64)
    assert torch.allclose(pace("linear", p, 0.2, 0.8), torch.tensor([0.2, 0.4, 0.6, 1.0, 1.0], dtype=torch.float64))
    root = pace("root", p, 0.2, 0.8)
    assert root[0] == pytest.approx(0.2) and root[3] == pytest.approx(1.0) and root[1] > 0.4  # faster early
    step = pace("step", p, 0.2, 0.8)
    assert step.tolist() == pytest.approx([0.2, 0.4, 0.6, 1.0, 1.0])
    flat = pace("step", torch.tensor([0.19], dtype=torch.float64), 0.2, 0.8).item()
    assert flat == pytest.approx(0.2)  # flat between stairs


def test_ranking_orders_easy_or_hard_first_with_ties_by_index():
    d = torch.tensor([0.5, 0.1, 0.5, 0.9])
    assert ranking(d, "easy-first").tolist() == [1, 0, 2, 3]
    assert ranking(d, "hard-first").tolist() == [3, 0, 2, 1]


def test_paced_order_draws_only_from_the_pool_of_its_step():
    ranked = torch.arange(100).flip(0)  # image 99 is the easiest
    u = torch.rand(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def pool(steps):  # 10 images at step 0, all 100 from step 2
        return torch.where(steps >= 2, 100, 10)

    order = PacedOrder(ranked, u, step0=0, per_step=10, pool=pool)
    first, later = order[:20], order[20:]
    assert set(first.tolist()) <= set(range(90, 100))
    assert later.min() < 90  # the whole set from step 2
    assert list(order) == order[:].tolist()  # a DataLoader's sampler reads the same
    assert len(order) == 40


@pytest.mark.parametrize("cache", ["auto", "none"])  # the decoded cache's batches, and a DataLoader's
def test_curriculum_trains_on_the_easiest_images_first(tmp_path, data, monkeypatch, cache):
    """Class a's images are the easy third: while the pool is a third of the images, every batch is class a."""
    split = open_source(data).split("train")
    scores = tmp_path / "scores.csv"
    with open(scores, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "loss"])
        for p, y in zip(split.paths, split.labels):
            w.writerow([os.path.relpath(p, tmp_path), 0.0 if y == 0 else 1.0 + len(p) % 3])  # relative to the CSV
    labels = []
    import imgclf.training.trainer as training

    real = training.train_steps

    def spy(model, batches, *a, **kw):
        batches = list(batches)  # the draw depends on the positions, not on when it is read
        labels.append(torch.cat([y for _, y in batches]))
        return real(model, batches, *a, **kw)

    monkeypatch.setattr(training, "train_steps", spy)
    kw = dict(curriculum="easy-first", pacing="step", pacing_start=1 / 3, pacing_full=0.7, difficulty=str(scores))
    # 5 steps an epoch: steps 0-4 are below the first stair (0.175)
    _train(tmp_path, data, "cur", epochs=5, cache=cache, **kw)
    assert len(labels[0]) == 36 and set(labels[0].tolist()) == {0}  # epoch 1: the pool is class a alone
    assert set(labels[-1].tolist()) == {0, 1, 2}
    assert sorted(labels[-1].tolist()) == sorted(split.labels)  # the last epoch is a permutation of all


def test_curriculum_resumes_exactly_without_its_difficulty_file(tmp_path, data):
    scores = tmp_path / "scores.csv"
    split = open_source(data).split("train")
    with open(scores, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "loss"])
        for i, p in enumerate(split.paths):
            w.writerow([os.path.abspath(p), (i * 7) % 11])
    kw = dict(curriculum="hard-first", pacing="root", difficulty=str(scores), save_every=1)
    whole = _train(tmp_path, data, "whole", epochs=3, **kw)
    part = os.path.join(tmp_path, "runs", "part")
    shutil.copytree(whole["run_dir"], part)  # as if the run had stopped after epoch 2
    os.remove(scores)  # the difficulties are in the checkpoint
    imgclf.train(resume=os.path.join(part, "epoch_2.pt"), workers=0)
    _same_weights(os.path.join(whole["run_dir"], "last.pt"), os.path.join(part, "last.pt"))


def test_difficulty_auto_trains_a_reference_run_first(tmp_path, data):
    res = _train(tmp_path, data, "auto", epochs=2, curriculum="easy-first")
    assert os.path.isfile(os.path.join(tmp_path, "runs", "auto-reference", "best.pt"))
    state = load_checkpoint(os.path.join(res["run_dir"], "last.pt"))["train_state"]["callbacks"]["curriculum"]
    assert len(state["difficulty"]) == 36 and torch.isfinite(state["difficulty"]).all()


def test_read_difficulty_names_what_is_missing(tmp_path, data):
    split = open_source(data).split("train")
    bad = tmp_path / "few.csv"
    bad.write_text("path,loss\n" + f"{os.path.abspath(split.paths[0])},1.0\n")
    with pytest.raises(DataError, match="scores 1 of the 36 training images"):
        read_difficulty(str(bad), split)
    cols = tmp_path / "cols.csv"
    cols.write_text("file,score\nx,1\n")
    with pytest.raises(DataError, match="needs columns path and loss"):
        read_difficulty(str(cols), split)


def test_score_cli_writes_every_training_image(tmp_path, tiny_best, tiny_data, capsys):
    out = tmp_path / "difficulty.csv"
    assert main(["score", tiny_best, "--data", str(tiny_data), "--out", str(out), "--workers", "0"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(open_source(str(tiny_data)).split("train"))
    assert all(float(r["loss"]) >= 0 and 0 <= float(r["p_true"]) <= 1 for r in rows)
    assert "scored" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adv-train", "fgsm", "--adv-eps", "eight"], "--eps 'eight' is not a number"),
        (["--adv-train", "fgsm", "--adv-eps", "0"], "must be one value above 0"),
        (["--adv-train", "nfgsm", "--adv-step", "0"], "--adv-step '0' must be one value above 0"),
        (["--monitor", "val_robust_acc"], "add --adv-train"),
        (["--curriculum", "easy-first", "--balance", "sampler"], "use --balance weights"),
        (["--curriculum", "easy-first", "--difficulty", "nowhere.csv"], "'nowhere.csv' not found"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, data, capsys, flags, message):
    argv = ["train", "--data", data, "--model", "test_tiny", "--workers", "0", "--out", str(tmp_path / "r"), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r") or not os.listdir(tmp_path / "r")


def test_curriculum_callback_stops_pacing_once_the_pool_is_whole():
    class T:
        class state:
            step = 0

        total_steps = 10
        paced = "unset"

    c = Curriculum(torch.zeros(4), "easy-first", "linear", 0.5, 0.5)
    c.trainer, c.ranked = T, ranking(c.difficulty, "easy-first")
    c.on_epoch_start(T)
    assert T.paced is c
    T.state.step = 5  # half the steps: the pool is whole
    c.on_epoch_start(T)
    assert T.paced is None
