"""--nproc's launcher, in-process: the ranks a CPU allows, the checks before torchrun starts, and how its torchrun
agent turns the ranks' ending into one line (issue 22: defects 4, 5 and 6). The real launches are in
tests/unit/training/test_distributed.py."""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import usage_error
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from imgclf.cli.console import after_stop
from imgclf.compute import distributed
from imgclf.compute.distributed import check_ranks, failure
from imgclf.core.errors import RankLost, UsageError

pytestmark = pytest.mark.usefixtures("in_tmp")


def _started(monkeypatch) -> list:
    """torchrun's start, recorded instead of run: a check that comes too late shows up as a start."""
    starts = []
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda *a, **k: starts.append(a) or pytest.fail("started"))
    return starts


def test_nproc_checks_the_data_before_torchrun_starts(capsys, monkeypatch, tmp_path, make_folder):
    """`imgclf train --data nowhere --nproc 2`: one line and exit 2, the data checked before any rank starts
    (it was found missing by each rank, then torchrun's 40-line report, exit 1)."""
    starts = _started(monkeypatch)
    line = usage_error(capsys, ["train", "--data", "nowhere", "--nproc", "2", "--out", str(tmp_path / "runs")])
    assert line.startswith("imgclf: error: data 'nowhere' not found") and not starts
    one_class = make_folder(tmp_path / "one", layout="flat", classes=("cat",), n=4)
    line = usage_error(capsys, ["train", "--data", str(one_class), "--nproc", "2", "--model", "test_tiny"])
    assert "has one class, 'cat'" in line and not starts


def test_more_cpu_ranks_than_cores_are_refused(capsys, monkeypatch, tiny_data):
    """`--nproc 100` on 2 cores started 100 ranks; now one line naming the cores, unless IMGCLF_OVERSUBSCRIBE=1."""
    starts = _started(monkeypatch)
    monkeypatch.setattr(distributed, "cores", lambda: 2)
    for command in (["train", "--data", str(tiny_data), "--model", "test_tiny"], ["evaluate", "w.pt"]):
        line = usage_error(capsys, [*command, "--device", "cpu", "--nproc", "3"])
        assert line.startswith("imgclf: error: --nproc 3: this machine has 2 CPU cores") and "--nproc 2" in line
    assert not starts
    check_ranks(2, torch.device("cpu"))
    check_ranks(3, torch.device("cuda"))  # a rank per GPU: the cores are not the limit
    monkeypatch.setenv("IMGCLF_OVERSUBSCRIBE", "1")
    check_ranks(3, torch.device("cpu"))
    monkeypatch.setenv("IMGCLF_OVERSUBSCRIBE", "0")
    with pytest.raises(UsageError):
        check_ranks(3, torch.device("cpu"))


def _failed(**codes: int) -> ChildFailedError:
    """torchrun's report of failed ranks: {"r0": exit code, ...} (negative: killed by that signal)."""
    failures = {int(r[1:]): ProcessFailure(int(r[1:]), 100 + int(r[1:]), c, "<N/A>") for r, c in codes.items()}
    return ChildFailedError("imgclf", failures)


def test_the_agent_says_which_rank_was_killed_in_one_line():
    """A rank killed under --nproc: one line naming it and what to do next for the command that ran, not
    torchrun's report; for predict, never the training run's last.pt."""
    code, line = failure(_failed(r1=-signal.SIGKILL, r0=RankLost.launched_exit_code), after_stop("train", {}))
    assert code == 1 and "\n" not in line
    assert (
        line.startswith("imgclf: error: rank 1 (pid 101) was stopped by SIGKILL") and "--resume RUN_DIR/last.pt" in line
    )
    _, line = failure(_failed(r0=-signal.SIGTERM, r1=-signal.SIGKILL), after_stop("predict", {"output": "o.csv"}))
    assert "rank 1 (pid 101) was stopped by SIGKILL" in line and "last.pt" not in line
    assert line.endswith(
        "run the same predict command again with --resume: it keeps the rows written and predicts the rest"
    )
    _, line = failure(_failed(r1=-signal.SIGKILL), after_stop("predict", {}))
    assert line.endswith("run the same predict command again") and "--resume" not in line
    # a rank that ended on its own has said why in its own line: its exit code, nothing more
    assert failure(_failed(r0=2)) == (2, "")
    assert failure(_failed(r1=1, r0=RankLost.launched_exit_code)) == (1, "")
    _, line = failure(_failed(r0=143, r1=-signal.SIGTERM))
    assert line.startswith("imgclf: error: rank 0 (pid 100) was stopped by SIGTERM")
    code, line = failure(_failed(r0=RankLost.launched_exit_code, r1=RankLost.launched_exit_code))
    assert code == 1 and line.startswith("imgclf: error: ranks 0, 1: the other ranks stopped answering")


def test_a_stopped_rank_says_what_fits_the_command(capsys, monkeypatch):
    """Under torchrun a rank stopped by SIGTERM says what to do for its command (predict: not a training run's
    last.pt); under --nproc it says nothing (the launcher speaks for every rank)."""
    from imgclf.cli import main as cli_main

    def stopped(*a, **k):
        raise cli_main.Terminated()

    monkeypatch.setattr(cli_main, "dispatch", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli_main.main(["predict", "w.pt", "images", "--output", "out.csv"]) == 143
    err = capsys.readouterr().err
    assert err.startswith("imgclf: rank 1 terminated") and "last.pt" not in err and "with --resume" in err
    assert cli_main.main(["train", "--data", "d"]) == 143
    assert "--resume RUN_DIR/last.pt" in capsys.readouterr().err
    monkeypatch.setenv("IMGCLF_LAUNCHED", "1")
    assert cli_main.main(["predict", "w.pt", "images"]) == 143
    assert capsys.readouterr().err == ""
