"""Preemption and automatic resume (issue 22): SIGTERM inside an epoch saves last.pt at the next step boundary
with the position inside the epoch and exits 143, and --resume then ends with the per-epoch metrics of a run that
was never stopped; --resume auto re-run until it exits 0; a rank killed under torchrun --max-restarts restarts the
group from the latest checkpoint; a finished `predict --resume` is a no-op.

The signal comes from a deterministic point: a callback that sends SIGTERM to its own process at a given step
(in-process, through `imgclf.cli.main`, so the CLI's own handler receives it)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import imgclf.cli.run_train as run_train
from imgclf.cli.main import main
from imgclf.core.callback import Callback
from imgclf.training.api import train as api_train

pytestmark = [pytest.mark.kernels, pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")]

# 48 training images in batches of 8: 6 steps an epoch
TINY = ["--model", "test_tiny", "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--seed", "3"]
TINY += ["--lr", "0.05", "-q"]


class SigtermAt(Callback):
    """Sends SIGTERM to this process once, after optimisation step `step` (what a scheduler's stop does)."""

    def __init__(self, step: int):
        self.step, self.sent = step, False

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def rows(run) -> list[dict]:
    """metrics.csv without the seconds."""
    import csv

    with open(os.path.join(run, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def train_with(monkeypatch, *callbacks):
    """`imgclf train` (main) runs with these callbacks besides the run's own."""
    monkeypatch.setattr(run_train, "train", functools.partial(api_train, callbacks=list(callbacks)))


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    """The uninterrupted runs the stopped ones are compared with."""
    out = tmp_path_factory.mktemp("full")
    for name, extra in RUNS.items():
        args = ["train", "--data", str(tiny_data), *TINY, *extra, "--out", str(out), "--name", name]
        assert main(args) == 0
    return out


# the tools whose state inside an epoch must survive too: the EMA, mixup's draws from the epoch's generator,
# gradients summed over two batches, lookahead, a per-step schedule
RUNS = {
    "plain": ["--epochs", "4", "--augment", "small"],
    "tools": ["--epochs", "4", "--ema", "--ema-decay", "0.9", "--ema-warmup", "0", "--mixup", "0.2"]
    + ["--accumulate", "2", "--lookahead", "--scheduler", "warmup-linear", "--augment", "small"],
}


@pytest.mark.parametrize("kind, stop_at", [("plain", 14), ("tools", 7)])
def test_sigterm_inside_the_third_epoch_then_resume_matches_uninterrupted(
    monkeypatch, capsys, tiny_data, tmp_path, full_run, kind, stop_at
):
    out = str(tmp_path)
    args = ["train", "--data", str(tiny_data), *TINY, *RUNS[kind], "--out", out, "--name", "stopped"]
    train_with(monkeypatch, SigtermAt(stop_at))  # "plain": step 2 of epoch 3; "tools": step 1 of its 3
    capsys.readouterr()
    assert main(args) == 143
    err = capsys.readouterr().err
    last = os.path.join(out, "stopped", "last.pt")
    assert f"imgclf: stopped at step {stop_at} (epoch 3" in err and f"--resume {last}" in err, err
    state = torch.load(last, weights_only=True)["train_state"]
    assert state["epoch"] == 2 and state["step"] == stop_at and state["position"]["batches"] > 0
    assert len(rows(os.path.join(out, "stopped"))) == 2
    monkeypatch.undo()

    assert main(["train", "--resume", last, "-q"]) == 0
    assert rows(os.path.join(out, "stopped")) == rows(full_run / kind)
    resumed = torch.load(last, weights_only=True)["train_state"]
    full = torch.load(full_run / kind / "last.pt", weights_only=True)
    assert "position" not in resumed and resumed["step"] == full["train_state"]["step"]
    ours = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.equal(ours[k], full["state_dict"][k]) for k in ours)


def test_the_handler_is_the_cli_s_and_is_put_back(monkeypatch, tiny_data, tmp_path):
    """Library code leaves SIGTERM alone: only `imgclf train` (the CLI, which owns the process) handles it, and
    the handler before is back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    class Look(Callback):
        def on_step_end(self, trainer):
            seen.append(signal.getsignal(signal.SIGTERM))

    api_train(data=str(tiny_data), **_kw(tmp_path, "lib"), epochs=1, callbacks=[Look()])
    assert seen and all(h is before for h in seen)  # imgclf.train installs nothing
    train_with(monkeypatch, Look())
    seen.clear()
    assert main(["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "c"]) == 0
    assert seen and seen[0] is not before and getattr(seen[0], "__name__", "") == "on_sigterm"
    assert signal.getsignal(signal.SIGTERM) is before


def _kw(tmp_path, name):
    return {
        "model": "test_tiny",
        "batch_size": 8,
        "workers": 0,
        "precision": "fp32",
        "out": str(tmp_path),
        "name": name,
    }


def test_resume_auto_rerun_until_it_exits_0(monkeypatch, capsys, tiny_data, tmp_path, full_run):
    """The same command, run again by a scheduler until it succeeds: a fresh start, two stops inside epochs, then
    the end; a further run is a no-op that says the run is finished. The metrics are the uninterrupted run's."""
    args = ["train", "--data", str(tiny_data), *TINY, *RUNS["plain"], "--out", str(tmp_path), "--name", "auto"]
    args += ["--resume", "auto"]
    codes, errs = [], []
    for stop_at in (4, 15, None):
        train_with(monkeypatch, *([SigtermAt(stop_at)] if stop_at else []))
        codes.append(main(args))
        errs.append(capsys.readouterr().err)
        monkeypatch.undo()
    assert codes == [143, 143, 0]
    assert "no best.pt" not in errs[1]  # stopped inside the first epoch: there is no best epoch yet to miss
    assert rows(tmp_path / "auto") == rows(full_run / "plain")
    capsys.readouterr()
    assert main([*args[:-1], "auto", "-v"]) == 0
    err = capsys.readouterr().err
    assert "is finished (epoch 4 of 4): nothing to do" in err, err
    assert json.loads((tmp_path / "auto" / "results.json").read_text())["epochs"] == 4


def test_resume_auto_without_a_name_is_refused(capsys, tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--resume", "auto"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "imgclf: error: --resume auto continues the run in OUT/NAME: give it a --name (the same on every re-run of "
        "the command)"
    )
    assert not list(tmp_path.iterdir())


def test_a_stop_before_the_first_step_starts_again_with_resume_auto(tiny_data, tmp_path):
    """A folder holding only what a run writes before its first checkpoint is started again by --resume auto
    (and still refused without it)."""
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text("model: test_tiny\n")
    (run / "train.log").write_text("")
    base = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "early"]
    assert main(base) == 2
    assert main([*base, "--resume", "auto"]) == 0
    assert json.loads((run / "results.json").read_text())["epochs"] == 1


def test_resume_auto_writes_the_report_of_a_run_stopped_after_its_last_epoch(tiny_data, tmp_path):
    base = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "r"]
    assert main(base) == 0
    (tmp_path / "r" / "results.json").unlink()
    assert main([*base, "--resume", "auto"]) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["epochs"] == 1


def test_a_position_inside_an_epoch_resumes_on_its_own_number_of_ranks(monkeypatch, capsys, tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "2", "--out", str(tmp_path), "--name", "p"]
    train_with(monkeypatch, SigtermAt(2))
    assert main(args) == 143
    monkeypatch.undo()
    from imgclf.training.api import preflight
    from imgclf.training.options import make_config

    with pytest.raises(Exception, match=r"saved inside epoch 1 on 1 rank\(s\): resume it on 1"):
        preflight(make_config({"resume": str(tmp_path / "p" / "last.pt")}), 2)


def test_max_restarts_needs_nproc(capsys, tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--max-restarts", "1"]
    assert main(args) == 2
    assert "--max-restarts restarts the ranks that --nproc starts" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_nproc_passes_max_restarts_to_torchrun(monkeypatch, tiny_data, tmp_path):
    """`--nproc 2 --max-restarts 1`: torchrun gets --max-restarts=1, the ranks' command line neither option."""
    seen = {}

    def fake_launch(nproc, argv, *, max_restarts=0, advice=""):
        seen.update(nproc=nproc, argv=argv, max_restarts=max_restarts)
        return 0

    monkeypatch.setattr(run_train, "launch_torchrun", fake_launch)
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "n"]
    assert main([*args, "--nproc", "2", "--max-restarts", "1"]) == 0
    assert seen == {"nproc": 2, "argv": args, "max_restarts": 1}


# ------------------------------------------------------------------------------------------------ torchrun


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
DDP = ["--model", "test_tiny", "--workers", "0", "--precision", "fp32", "--seed", "3", "--batch-size", "8"]
DDP += ["--scheduler", "warmup-linear", "--epochs", "3"]  # 24 images a rank: 3 steps an epoch, 9 in all


def test_a_rank_killed_under_max_restarts_restarts_the_group_and_ends_as_uninterrupted(tiny_data, tmp_path):
    """torchrun --max-restarts 1: rank 1 dies inside the second epoch on the first attempt (an os._exit from a
    hook); torchrun restarts both ranks, which continue from last.pt by themselves and end with the metrics of
    the uninterrupted 2-rank run."""
    base = ["-m", "imgclf", "train", "--data", str(tiny_data), *DDP, "--out", str(tmp_path)]
    full = subprocess.run([*TORCHRUN, *base, "--name", "full"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    env = {**os.environ, "IMGCLF_TEST_DIE_AT": "5", "PYTHONPATH": os.path.dirname(__file__)}
    cmd = [*TORCHRUN, "--max-restarts=1", "-m", "preempt_hook", *base[2:], "--name", "k"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-12000:]
    assert "dying at step 5" in r.stderr  # the first attempt's rank 1 did die
    assert f"--resume auto: continuing {tmp_path / 'k'} from {tmp_path / 'k' / 'last.pt'}" in r.stderr
    assert rows(tmp_path / "k") == rows(tmp_path / "full")


def test_one_rank_s_sigterm_stops_every_rank_at_one_step(tiny_data, tmp_path):
    """SIGTERM to rank 1 alone, at step 3: the ranks agree (an all-reduce of a flag every 8 steps) and both stop at
    step 8, inside the first epoch (12 steps of 2 images a rank); last.pt holds both ranks' positions, and --resume
    on 2 ranks ends as the uninterrupted run."""
    base = ["-m", "imgclf", "train", "--data", str(tiny_data), *DDP, "--batch-size", "2", "--epochs", "2"]
    base += ["--out", str(tmp_path)]
    full = subprocess.run([*TORCHRUN, *base, "--name", "full"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    env = {**os.environ, "IMGCLF_TEST_TERM_AT": "3", "PYTHONPATH": os.path.dirname(__file__)}
    cmd = [*TORCHRUN, "-m", "preempt_hook", *base[2:], "--name", "t"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0
    last = tmp_path / "t" / "last.pt"
    state = torch.load(last, weights_only=True)["train_state"]
    assert state["step"] == 8 and state["epoch"] == 0, r.stderr[-3000:]
    assert [p["seen"] for p in state["position"]["ranks"]] == [16, 16]
    assert "imgclf: rank 0: stopped at step 8" in r.stderr and "rank 1: stopped" not in r.stderr  # one line
    r = subprocess.run(
        [*TORCHRUN, "-m", "imgclf", "train", "--resume", str(last)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows(tmp_path / "t") == rows(tmp_path / "full")
    assert torch.equal(
        torch.load(last, weights_only=True)["state_dict"]["fc.weight"],
        torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]["fc.weight"],
    )
