"""Exact resume: a run killed with SIGKILL during its third epoch and resumed from last.pt ends with the same
per-epoch validation metrics as a run that was never interrupted. Resume on data that changed is refused."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.kernels

# digits upscaled to 24 px with a small CNN: a few seconds an epoch, long enough to kill inside one.
ARGS = [
    "train",
    "--data",
    "digits",
    "--model",
    "smallcnn",
    "--img-size",
    "24",
    "--epochs",
    "4",
    "--batch-size",
    "64",
    "--workers",
    "1",
    "--seed",
    "3",
    "--lr",
    "0.05",
    "--step-size",
    "2",
]
VAL_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr"]


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "imgclf", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _rows(run_dir):
    """Every column of metrics.csv but the seconds (VAL_COLUMNS, and the EMA's when it is on)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert all(k in r for r in rows for k in VAL_COLUMNS)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# The tools whose state must survive a kill too: the weights' moving average, mixup's draws from the epoch's
# generator, and gradients summed over two batches (a kill between them must not show).
TOOLS = ["--ema", "--ema-decay", "0.9", "--ema-warmup", "0", "--mixup", "0.2", "--accumulate", "2"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("tools", [[], TOOLS], ids=["plain", "ema-mixup-accumulate"])
def test_sigkill_during_third_epoch_then_resume_matches_uninterrupted(tmp_path, tools):
    out = str(tmp_path)
    args = ARGS + tools
    full = _cli(args + ["--out", out, "--name", "full"])
    assert full.wait(timeout=600) == 0, full.stdout.read()

    victim = _cli(args + ["--out", out, "--name", "killed"])
    last = os.path.join(out, "killed", "last.pt")
    deadline = time.monotonic() + 600
    # Wait until epoch 2 is complete (last.pt says so), then kill inside epoch 3.
    while time.monotonic() < deadline and victim.poll() is None:
        if os.path.exists(last):
            try:
                if torch.load(last, weights_only=True)["epoch"] == 2:
                    break
            except Exception:  # being replaced right now; look again
                pass
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed in epoch 3"
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at == 2, f"expected the kill to land in epoch 3, last.pt holds epoch {killed_at}"
    assert len(_rows(os.path.join(out, "killed"))) == 2
    # no temporary checkpoint files left visible as checkpoints
    assert not [
        f
        for f in os.listdir(os.path.join(out, "killed"))
        if f.endswith(".pt") and not f.startswith((".tmp", "best", "last", "epoch_"))
    ]

    resumed = _cli(["train", "--resume", last])
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert "epoch 3/4" in log and "epoch 1/4" not in log

    a, b = _rows(os.path.join(out, "full")), _rows(os.path.join(out, "killed"))
    assert [r["epoch"] for r in b] == ["1", "2", "3", "4"]
    assert a == b
    if tools:
        assert all(r["ema_val_acc"] for r in b)


# ----------------------------------------------------------------------------------------------- resume on changed data


def _folder_state(d) -> dict:
    """Every file of a run folder: (inode, size, mtime) - a rewrite, even with the same bytes, shows up."""
    out = {}
    for name in sorted(os.listdir(d)):
        st = os.stat(os.path.join(d, name))
        out[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def one_epoch_run(tmp_path, make_folder):
    """A 1-epoch test_tiny run on a flat folder (validation carved, so the run has a split.csv)."""
    from imgclf.cli.main import main

    data = make_folder(tmp_path / "d", layout="flat", classes=("cat", "dog"), n=8)
    argv = [
        "train",
        "--data",
        str(data),
        "--model",
        "test_tiny",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "r",
        "-q",
    ]
    assert main(argv) == 0
    return data, tmp_path / "runs" / "r"


@pytest.mark.parametrize(
    "change, said", [("add", "1 file added, 0 removed"), ("class", "classes added: fox"), ("touch", "modified")]
)
def test_resume_after_the_data_changed_is_refused_and_touches_nothing(
    capsys, one_epoch_run, image_of_class, change, said
):
    import numpy as np

    from imgclf.cli.main import main

    data, run = one_epoch_run
    before = _folder_state(run)
    capsys.readouterr()
    rng = np.random.default_rng(1)
    if change == "add":
        image_of_class(0, 16, rng=rng).save(data / "cat" / "new.png")
    elif change == "class":
        (data / "fox").mkdir()
        for i in range(3):
            image_of_class(2, 16, rng=rng).save(data / "fox" / f"{i}.png")
    else:
        f = data / "dog" / "002.png"
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    rc = main(["train", "--resume", str(run / "last.pt"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "the data changed" in err and said in err and "--resume" in err
    assert _folder_state(run) == before


def test_resume_on_the_same_data_keeps_its_split_file(capsys, one_epoch_run):
    from imgclf.cli.main import main

    data, run = one_epoch_run
    split = _folder_state(run)["split.csv"]
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "-q"]) == 0
    assert _folder_state(run)["split.csv"] == split, "resume rewrote split.csv"
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
