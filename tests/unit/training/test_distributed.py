"""torch.distributed: shards, torchrun training (2 ranks on Gloo), resume across world sizes, sharded evaluation,
a rank killed mid-run, and two "nodes" on the loopback address. Every run here is a real torchrun launch of
`imgclf` on the tiny data (a few seconds each)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import process_gone

import imgclf as imgclf_package
from imgclf.compute.distributed import batch_block, shard_order, strip_nproc
from imgclf.data.batches import Batches, epoch_order
from imgclf.models.checkpoint import load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY = ["--model", "test_tiny", "--workers", "0", "--precision", "fp32", "--seed", "3", "--scheduler", "warmup-linear"]
TINY += ["--batch-size", "8"]  # per rank: a global batch of 16 on 2 ranks


def torchrun(args: list[str], *, nproc: int = 2, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "imgclf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def imgclf(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "imgclf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------ shards


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (7, 3), (3, 4)])
def test_shards_cover_the_order_with_equal_counts(n, size):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_order(order, r, size) for r in range(size)]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank, or DDP would hang
    assert set(torch.cat(shards).tolist()) == set(range(n))
    assert sum(len(s) for s in shards) - n < size  # padding: fewer than one image per rank


def test_epoch_order_of_one_process_is_unchanged_by_sharding_support():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(epoch_order(20, 8, gen()), torch.randperm(20, generator=gen()))
    # every rank draws the same permutation and keeps its own part of it
    parts = [epoch_order(20, 8, gen(), shard=(r, 2)) for r in range(2)]
    assert torch.equal(torch.stack(parts, 1).flatten(), torch.randperm(20, generator=gen()))


def test_batch_blocks_concatenate_to_all_batches():
    for n in (0, 1, 5, 6):
        blocks = [batch_block(n, r, 3) for r in range(3)]
        assert [b for blk in blocks for b in blk] == list(range(n))
    images, labels = torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10)
    part = Batches(images, labels, batch_size=3, transform=lambda x, g: x, block=range(1, 3))
    assert [y.tolist() for _, y in part] == [[3, 4, 5], [6, 7, 8]]


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--epochs", "1"]) == ["train", "--epochs", "1"]
    assert strip_nproc(["train", "--nproc=2"]) == ["train"]


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory) -> Path:
    """2 epochs of the tiny model on 2 ranks."""
    out = tmp_path_factory.mktemp("ddp")
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "2", "--save-every", "1"]
    r = ok(torchrun([*args, "--out", str(out), "--name", "r"]))
    assert "distributed: 2 ranks (gloo), 8 images per rank per step: a global batch of 16" in r.stderr
    return out / "r"


def test_a_distributed_run_writes_one_run_directory(ddp_run):
    results = json.loads((ddp_run / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 2
    # 24 train images per rank (48 / 2) in batches of 8: 3 steps an epoch
    assert results["steps"] == 6
    lines = (ddp_run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3  # a header and one row per epoch: rank 1 wrote nothing
    assert sorted(p.name for p in ddp_run.parent.iterdir()) == ["r"]
    # the model card: rank 0's, of the 2-rank run; no rank left a temporary file racing it
    assert "2 process(es)" in (ddp_run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not [p.name for p in ddp_run.iterdir() if p.name.endswith(".tmp")]


def test_the_schedule_follows_the_global_batch(ddp_run, tiny_data, tmp_path):
    """A per-step schedule counts each rank's steps: 2 ranks at batch 8 step as one process at batch 16."""
    one = [*TINY[:-2], "--batch-size", "16"]
    ok(imgclf(["train", "--data", str(tiny_data), *one, "--epochs", "2", "--out", str(tmp_path), "--name", "one"]))

    def lrs(run):
        return [row.split(",")[6] for row in (run / "metrics.csv").read_text().splitlines()[1:]]

    assert lrs(ddp_run) == lrs(tmp_path / "one")
    assert json.loads((tmp_path / "one" / "results.json").read_text())["steps"] == 6


def test_distributed_checkpoint_is_an_ordinary_artifact(ddp_run, tiny_data, tmp_path):
    r = ok(imgclf(["predict", str(ddp_run / "best.pt"), str(tiny_data / "test"), "--json"]))
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 9 and all("label" in row for row in rows)
    ok(imgclf(["evaluate", str(ddp_run / "best.pt"), "--split", "test", "--out", str(tmp_path / "e")]))


def test_distributed_resume_repeats_the_uninterrupted_run(ddp_run, tmp_path):
    """The run resumed on 2 ranks from its epoch-1 checkpoint ends with the weights of the run that never stopped."""
    import shutil

    shutil.copytree(ddp_run, tmp_path / "a")
    r = ok(torchrun(["train", "--resume", str(tmp_path / "a" / "epoch_1.pt")]))
    assert same_weights(tmp_path / "a" / "last.pt", ddp_run / "last.pt"), r.stderr[-2000:]
    assert not same_weights(ddp_run / "epoch_1.pt", ddp_run / "last.pt")


def test_resume_crosses_world_sizes(ddp_run, tiny_data, tmp_path):
    """A distributed run's last.pt continues in one process, and a one-process run's under torchrun."""
    import shutil

    shutil.copytree(ddp_run, tmp_path / "d")
    ok(imgclf(["train", "--resume", str(tmp_path / "d" / "last.pt"), "--epochs", "3"]))
    assert json.loads((tmp_path / "d" / "results.json").read_text())["epochs"] == 3

    ok(imgclf(["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "s"]))
    ok(torchrun(["train", "--resume", str(tmp_path / "s" / "last.pt"), "--epochs", "2"]))
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["epochs"] == 2 and results["world_size"] == 2


def test_nproc_launches_torchrun(tiny_data, tmp_path):
    temp = tmp_path / "temp"  # the system temp folder of this launch
    temp.mkdir()
    out = tmp_path / "runs"
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(out), "--nproc", "2"]
    r = ok(imgclf(args, env={**os.environ, "TMPDIR": str(temp)}))
    (run,) = out.iterdir()
    assert json.loads((run / "results.json").read_text())["world_size"] == 2, r.stderr[-2000:]
    # issue 22 (16): torchrun left a torchelastic_* log folder in the temp folder on every run
    assert not [p.name for p in temp.iterdir() if p.name.startswith("torchelastic_")]


def test_four_ranks_on_data_without_a_val_split(make_folder, tmp_path):
    """Issue 22 (1): data without a val split (its validation carved from train) on 4 ranks: every rank wrote
    split.csv, and three died on each other's temporary files. Rank 0 alone writes the run folder."""
    data = make_folder(tmp_path / "flat", layout="flat", classes=("cat", "dog", "fox"), n=12)
    out = tmp_path / "runs"
    r = ok(
        torchrun(["train", "--data", str(data), *TINY, "--epochs", "1", "--out", str(out), "--name", "four"], nproc=4)
    )
    run = out / "four"
    assert json.loads((run / "results.json").read_text())["world_size"] == 4, r.stderr[-2000:]
    assert (run / "split.csv").read_text().count("\n") == 1 + 36  # the header and every image, once
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert sorted(p.name for p in out.iterdir()) == ["four"]


def test_time_budget_and_frozen_feature_cache_under_torchrun(tiny_data, tmp_path):
    """--time-budget: rank 0's measurement of the steps that fit is every rank's (else one rank would stop first
    and the other wait for it forever); --freeze backbone: each rank trains the head on the cached features."""
    base = ["train", "--data", str(tiny_data), *TINY, "--out", str(tmp_path)]
    # 500 epochs of 3 steps: far more than 6 s hold (the budget measured ~40 steps/s on 2 cores here; 50 epochs fit
    # once the first epoch's one-off costs were no longer inside the measurement)
    r = ok(torchrun([*base, "--epochs", "500", "--time-budget", "0.1", "--name", "budget"], timeout=240))
    config = (tmp_path / "budget" / "config.yaml").read_text()
    assert "max_steps:" in config and "max_steps: null" not in config, r.stderr[-2000:]
    results = json.loads((tmp_path / "budget" / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] < 500 * 3

    r = ok(torchrun([*base, "--epochs", "2", "--freeze", "backbone", "--name", "frozen", "--ood-bank", "0"]))
    assert "frozen-feature cache built" in r.stderr
    results = json.loads((tmp_path / "frozen" / "results.json").read_text())
    assert results["steps"] == 6
    # rank 0 fits the out-of-distribution thresholds while the other ends; --ood-bank 0: msp and energy, no kNN
    assert set(results["ood"]["thresholds"]) == {"msp", "energy"} and results["ood"]["k"] is None
    assert load_checkpoint(str(tmp_path / "frozen" / "best.pt"))["ood"]["bank"] is None


def test_multilabel_training_under_torchrun(multilabel_csv, tmp_path):
    """Issue 24: a multi-label run on 2 ranks, with mixup on the multi-hot targets, the EMA and --pos-weight auto:
    one run folder, the world size and task recorded, one threshold per label fitted on validation and stored."""
    args = ["train", "--data", str(multilabel_csv), *TINY, "--epochs", "2", "--mixup", "0.2", "--ema"]
    args += ["--pos-weight", "auto", "--ood-bank", "0", "--out", str(tmp_path), "--name", "ml"]
    r = ok(torchrun(args))
    results = json.loads((tmp_path / "ml" / "results.json").read_text())
    assert (results["task"], results["world_size"]) == ("multilabel", 2), r.stderr[-2000:]
    assert "with pos_weight per label" in r.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["ml"]
    thresholds = load_checkpoint(str(tmp_path / "ml" / "best.pt"))["thresholds"]
    assert len(thresholds) == 3 and all(0 <= t <= 1 for t in thresholds) and thresholds == results["thresholds"]


def test_sync_bn_on_cpu_is_refused_in_one_line(tiny_data, tmp_path):
    r = torchrun(["train", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(tmp_path), "--sync-bn"])
    assert r.returncode != 0
    assert "imgclf: error: --sync-bn: PyTorch's SyncBatchNorm runs on GPUs only" in r.stderr
    # torchrun prints its own report of the failed workers; imgclf's lines carry no traceback. imgclf's own frames
    # are those in its package folder: a checkout in a folder named imgclf has torch's frames under imgclf/ too
    package = str(Path(imgclf_package.__file__).parent)
    assert not [line for line in r.stderr.splitlines() if line.strip().startswith("File ") and package in line]
    assert not any(tmp_path.iterdir())
    # with --nproc the options are checked before torchrun starts: one line, exit 2
    r = imgclf(["train", "--data", str(tiny_data), *TINY, "--out", str(tmp_path), "--sync-bn", "--nproc", "2"])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("imgclf: error: --sync-bn"), r.stderr
    assert "torch.distributed" not in r.stderr


NAN_ON_RANK_1 = """
import os, sys
import imgclf
from imgclf.core.callback import Callback
from imgclf.core.errors import TrainingDiverged

class NanOnRank1(Callback):  # rank 1's first batch of epoch 2 is NaN: its loss alone goes non-finite
    def on_device_batch(self, trainer, x, y):
        if os.environ["RANK"] == "1" and trainer.state.step == 3:
            return x * float("nan")
        return x

try:
    imgclf.train(data=sys.argv[1], out=sys.argv[2], name="nan", callbacks=[NanOnRank1()], model="test_tiny",
                 workers=0, precision="fp32", batch_size=8, epochs=3, dist_timeout=240)
except TrainingDiverged as e:
    # one write per line: under PYTHONUNBUFFERED print() writes the text and its newline separately, and the two
    # ranks' lines can interleave in the shared pipe
    sys.stdout.write(f"rank {os.environ['RANK']}: {e}\\n")
    sys.stdout.flush()
    sys.exit(1)
"""


def test_a_rank_local_non_finite_loss_stops_every_rank_together(tiny_data, tmp_path):
    """Issue 22 (3) under torchrun: a non-finite loss on one rank stops every rank at the same point (the ranks
    agree in one all-reduce), naming the same step and checkpoint, well within --dist-timeout (240 s here): none
    waits for a rank that left (the run is given 200 s)."""
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=2", str(script), str(tiny_data), str(tmp_path / "runs")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("rank "))
    assert r.returncode != 0 and len(lines) == 2, r.stdout[-2000:] + r.stderr[-3000:]
    last = tmp_path / "runs" / "nan" / "last.pt"
    assert lines[1].startswith("rank 1: step 4: the loss is nan, in epoch 2; the run stopped; ")
    assert lines[0].startswith("rank 0: step 4: the loss is not finite, in epoch 2; the run stopped; ")
    assert all(f"the last good checkpoint is {last} (epoch 1)" in line for line in lines)
    assert torch.load(last, weights_only=True)["train_state"]["epoch"] == 1


# ------------------------------------------------------------------------------------------------ evaluation


def test_sharded_evaluation_equals_one_process(ddp_run, tmp_path, image_of_class):
    """Every number of eval.json equal, the --ood-data block's too: each rank runs whole batches, gathered in order."""
    best = str(ddp_run / "best.pt")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    for i in range(7):  # images of a colour no class has: 2 batches of 4, so both ranks score some
        image_of_class(5, 16, rng=np.random.default_rng(i)).save(unknown / f"u{i}.png")
    common = ["--split", "val", "--batch-size", "4", "--precision", "fp32", "--ood-data", str(unknown)]
    ok(imgclf(["evaluate", best, *common, "--out", str(tmp_path / "one")]))
    ok(torchrun(["evaluate", best, *common, "--out", str(tmp_path / "two")]))
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert one == two
    assert one["num_images"] == 18
    assert one["ood"]["unknown_images"] == 7 and set(one["ood"]["scores"]) == {
        "msp",
        "energy",
        "knn",
    }  # the bank rank 0 fitted


# ------------------------------------------------------------------------------------------------ failures


def test_a_killed_rank_stops_the_run_and_resume_finishes_it(tiny_data, tmp_path):
    """SIGKILL of rank 1 after the first epoch is saved: every process exits (well within --dist-timeout), and
    --resume finishes the run from the last whole checkpoint."""
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "400", "--out", str(tmp_path), "--name", "k"]
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "imgclf", *args, "--dist-timeout", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = tmp_path / "k" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "the first epoch was never saved"
        rank1 = _worker_with_rank(proc.pid, 1)
        os.kill(rank1, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert waited < 60, f"the other rank took {waited:.0f} s to stop"
    assert all(process_gone(pid) for pid in _children(proc.pid))
    # rank 0 says why it stopped: torchrun ended it, or it lost its peer first
    assert "imgclf: rank 0 terminated" in err or "another rank stopped answering" in err, err[-3000:]
    saved = torch.load(last, weights_only=True)["train_state"]["epoch"]
    assert 1 <= saved < 400
    ok(torchrun(["train", "--resume", str(last), "--epochs", str(saved + 2)]))
    results = json.loads((tmp_path / "k" / "results.json").read_text())
    assert results["epochs"] == saved + 2, err[-2000:]


def _launched(args: list[str], until, tmp_path) -> tuple[subprocess.Popen, str]:
    """`imgclf ARGS --nproc 2` in a session of its own, as a terminal runs it, started in a temp folder of its own;
    `until(proc)` does what the test does to it once its first epoch is saved; (the process, its stderr)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    cmd = [sys.executable, "-m", "imgclf", *args, "--nproc", "2"]
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("runs/*/last.pt")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(tmp_path.glob("runs/*/last.pt")), "the first epoch was never saved"
        until(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, err


def _imgclf_lines(err: str) -> list[str]:
    """The lines of stderr that report a stop or failure (imgclf's, torchrun's, Python's)."""
    marks = ("imgclf: ", "Traceback", "Error", "SIGINT", "SIGTERM", "SIGKILL", "signal")
    return [line for line in err.splitlines() if any(m in line for m in marks)]


def test_nproc_ctrl_c_is_one_line(tiny_data, tmp_path):
    """Issue 22 (5): Ctrl-C of an --nproc run printed every rank's lines and torchrun's traceback (~700 lines for
    100 ranks); now the launcher passes it on, the ranks stop, and one line says so, exit 130."""
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "4000", "--out", str(tmp_path / "runs")]
    proc, err = _launched(args, lambda p: os.killpg(p.pid, signal.SIGINT), tmp_path)  # the terminal's Ctrl-C
    assert proc.returncode == 130, err[-3000:]
    assert _imgclf_lines(err) == ["imgclf: interrupted"], err[-3000:]
    assert not list((tmp_path / "temp").iterdir()), "torchrun left files in the temp folder"


def test_nproc_a_killed_rank_is_one_line(tiny_data, tmp_path):
    """Issue 22 (6): a rank killed under --nproc: one line naming it and how to go on, not torchrun's report."""
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "4000", "--out", str(tmp_path / "runs")]
    args += ["--dist-timeout", "60"]
    proc, err = _launched(args, lambda p: os.kill(_worker_with_rank(_agent(p.pid), 1), signal.SIGKILL), tmp_path)
    assert proc.returncode == 1, err[-3000:]
    lines = _imgclf_lines(err)
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith("imgclf: error: rank 1 (pid ") and "was stopped by SIGKILL" in line, err[-3000:]
    assert line.endswith("continues from its last whole checkpoint with --resume RUN_DIR/last.pt")
    assert not list((tmp_path / "temp").iterdir()), "torchrun left files in the temp folder"


def _agent(launcher: int) -> int:
    (pid,) = _children(launcher)
    return pid


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _worker_with_rank(agent: int, rank: int) -> int:
    for pid in _children(agent):
        if _has_rank(pid, rank):
            return pid
    raise AssertionError(f"no worker with RANK={rank} under torchrun (pid {agent})")


# ------------------------------------------------------------------------------------------------ two nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_the_loopback_address(tiny_data, tmp_path):
    """Two torchrun launches, one process each, meeting at a c10d rendezvous on 127.0.0.1 as two machines would."""
    port = _free_port()
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "2", "--out", str(tmp_path), "--name", "n"]
    node = [
        *TORCHRUN,
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=imgclf-test",
        "-m",
        "imgclf",
        *args,
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[1][-2000:] for o in outs)
    results = json.loads((tmp_path / "n" / "results.json").read_text())
    assert results["world_size"] == 2
    r = ok(imgclf(["predict", str(tmp_path / "n" / "best.pt"), str(tiny_data / "test"), "--json"]))
    assert len(r.stdout.splitlines()) == 9


def test_a_lost_node_stops_the_other_with_one_line(tiny_data, tmp_path):
    """Across machines no torchrun stops the survivors: rank 0 finds its peer gone at the next collective and
    says so in one line, naming the checkpoint to resume."""
    port = _free_port()
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "4000", "--out", str(tmp_path), "--name", "n"]
    node = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    node += ["--rdzv-id=imgclf-lost", "-m", "imgclf", *args, "--dist-timeout", "60"]
    procs = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "n" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        rank1 = next(pid for p in procs for pid in _children(p.pid) if _has_rank(pid, 1))
        os.kill(rank1, signal.SIGKILL)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = "".join(o[1] for o in outs)
    assert "imgclf: error: rank 0: another rank stopped answering (" in err, err[-3000:]
    assert f"continue it with --resume {tmp_path / 'n' / 'last.pt'}" in err


def _has_rank(pid: int, rank: int) -> bool:
    return f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
