"""Writing files safely: temporary names that carry their writer, the temporary files of killed writers removed
(and only theirs), scratch folders of killed commands, and a full disk reported in one line with nothing half
written."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import DiskFullError
from imgclf.core.fileio import stops_deferred
from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
from imgclf.models.registry import build_model

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder

PREPROCESS = {"img_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _ckpt(model_name: str = "test_tiny", classes=("cat", "dog", "fox"), **kw) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, len(classes))
    return make_checkpoint(model, model_name=model_name, classes=list(classes), preprocess=PREPROCESS, config={}, **kw)


def _cli_error(capsys, argv, code: int = 2) -> str:
    """Run the CLI; it must fail with `code` and exactly one line on stderr, no traceback."""
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err + out
    return lines[0]


def _killed_writer(target: Path, suffix: str = ".tmp", *, wait: bool = False) -> subprocess.Popen:
    """A process that makes a temporary file for `target` with temp_beside and then dies by SIGKILL (or, with
    `wait`, stays alive until its stdin closes). Its temporary file's name is its first line of output."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from imgclf.core.fileio import temp_beside
        fd, tmp = temp_beside({str(target)!r}, suffix={suffix!r})
        os.write(fd, b"half a checkpoint")
        print(tmp, flush=True)
        if {wait!r}:
            sys.stdin.read()
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _temp_of(proc: subprocess.Popen) -> Path:
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file()
    return tmp


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs, mounted for this test: a disk that really fills (needs root and mount permission)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _fill(folder: Path) -> None:
    """Write a file until the disk is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _only(folder: Path, *names: str) -> None:
    left = sorted(os.listdir(folder))
    assert left == sorted(names), f"left behind: {left}"


def test_temp_name_carries_its_writer(tmp_path):
    from imgclf.core.fileio import temp_beside

    fd, tmp = temp_beside(str(tmp_path / "last.pt"))
    os.close(fd)
    assert re.fullmatch(rf"\.last\.pt\.{os.getpid()}-[0-9a-f]{{8}}-[a-z0-9_]{{8}}\.tmp", os.path.basename(tmp)), tmp
    fd, tmp = temp_beside(str(tmp_path / "m.onnx"), suffix=".tmp.onnx")
    os.close(fd)
    assert tmp.endswith(".tmp.onnx") and os.path.basename(tmp).startswith(f".m.onnx.{os.getpid()}-")


def test_rewrite_removes_temps_of_killed_writers_only(tmp_path):
    # Before: `.last.pt.XXXX.tmp` of a run killed with SIGKILL stayed forever, through --resume and re-exports.
    from imgclf.core.fileio import atomic_open

    target = tmp_path / "last.pt"
    dead = _killed_writer(target)
    dead_tmp = _temp_of(dead)
    assert dead.wait() == -signal.SIGKILL
    live = _killed_writer(target, wait=True)
    try:
        live_tmp = _temp_of(live)
        unrelated = [
            tmp_path / n
            for n in (
                "notes.tmp",
                ".last.pt.mine.tmp",
                ".last.pt.99999999-0000000a-abcdefgh.txt",
                ".best.pt.1-00000000-abcdefgh.tmp",
            )
        ]
        for u in unrelated:
            u.write_text("keep me")
        with atomic_open(str(target), "wb") as f:
            f.write(b"a whole checkpoint")
        assert not dead_tmp.exists(), "the killed writer's temporary file is still there"
        assert live_tmp.exists(), "a running writer's temporary file was removed"
        assert all(u.exists() for u in unrelated), "a file that is not this path's temporary file was removed"
        assert target.read_bytes() == b"a whole checkpoint"
    finally:
        live.stdin.close()
        live.wait()


def test_export_temp_of_killed_writer_removed_on_reexport(tmp_path):
    # exporting names its temporary file with temp_beside(out, suffix=".tmp" + format suffix): the next
    # temp_beside for the same output (the re-export) removes the dead one.
    from imgclf.core.fileio import temp_beside

    out = tmp_path / "model.int8.onnx"
    dead = _killed_writer(out, suffix=".tmp.int8.onnx")
    dead_tmp = _temp_of(dead)
    dead.wait()
    assert dead_tmp.name.startswith(".model.int8.onnx.") and dead_tmp.name.endswith(".tmp.int8.onnx")
    fd, tmp = temp_beside(str(out), suffix=".tmp.int8.onnx")
    os.close(fd)
    assert not dead_tmp.exists()
    assert os.path.exists(tmp)


def test_remove_stale_temps_of_a_folder(tmp_path):
    # What a resumed run calls on its run directory: every dead writer's temporary file, whatever its target.
    from imgclf.core.fileio import FOREIGN_STALE_SECONDS, remove_stale_temps

    dead = [_killed_writer(tmp_path / name) for name in ("last.pt", "epoch_3.pt", "metrics.csv")]
    dead_tmps = [_temp_of(p) for p in dead]
    for p in dead:
        p.wait()
    # older names without a writer (an imgclf from before): removed only when untouched for a day
    old, young = tmp_path / ".best.pt.k2j4h5g6.tmp", tmp_path / ".last.pt.a1b2c3d4.tmp"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    then = time.time() - FOREIGN_STALE_SECONDS - 60
    os.utime(old, (then, then))
    keep = tmp_path / "best.pt"
    keep.write_bytes(b"x")
    removed = remove_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted(str(t) for t in dead_tmps + [old])
    assert young.exists() and keep.exists()


def test_checkpoint_on_a_full_disk(tiny_fs):
    # Before: "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...", exit 1 with the
    # reason only under -v. torch's zip writer hides the errno.
    path = tiny_fs / "last.pt"
    save_checkpoint(_ckpt(), str(path))
    old = path.read_bytes()
    big = _ckpt("smallcnn", epoch=1)  # about 1.1 MiB of weights: more than the whole disk
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(big, str(path))
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert re.fullmatch(
        rf"no space left on device writing {re.escape(str(path))} \(about 1\.1 MiB needed, \d+\.\d MiB free\): "
        r"free some space there, or write elsewhere \(--out\)",
        msg,
    ), msg
    assert path.read_bytes() == old, "the old checkpoint was changed"
    _only(tiny_fs, "last.pt")


def test_probe_finds_a_full_disk_behind_an_error_without_errno(tiny_fs):
    # A RuntimeError that carries no OSError at all (as other torch versions may raise): the probe write
    # asks the file system.
    from imgclf.core.fileio import atomic_open

    _fill(tiny_fs)
    with pytest.raises(DiskFullError):
        with atomic_open(str(tiny_fs / "x.pt"), "wb"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    _only(tiny_fs, "filler")
    os.unlink(tiny_fs / "filler")
    with pytest.raises(RuntimeError, match="not about space"):  # on a disk with room, the error is left alone
        with atomic_open(str(tiny_fs / "x.pt"), "wb"):
            raise RuntimeError("not about space")
    _only(tiny_fs)


def test_json_csv_and_plots_on_a_full_disk(tiny_fs):
    from imgclf.core.fileio import atomic_open, write_json
    from imgclf.evaluation.plots import plot_curves

    (tiny_fs / "results.json").write_text("{}")
    _fill(tiny_fs)
    with pytest.raises(DiskFullError, match=r"^no space left on device writing .*results\.json"):
        write_json({"x": list(range(100_000))}, str(tiny_fs / "results.json"))
    assert (tiny_fs / "results.json").read_text() == "{}"
    with pytest.raises(DiskFullError, match=r"metrics\.csv"):
        with atomic_open(str(tiny_fs / "metrics.csv"), newline="") as f:
            f.write("epoch,loss\n" * 100_000)
    rows = [
        {"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5, "val_macro_f1": 0.5}
        for e in (1, 2)
    ]
    with pytest.raises(DiskFullError, match=r"curves\.png"):
        plot_curves(rows, str(tiny_fs / "curves.png"))
    _only(tiny_fs, "filler", "results.json")


def test_cli_evaluate_to_a_full_disk_is_one_line_exit_1(tiny_best, tiny_fs, capsys):
    # Exit 1 (DiskFullError is not a usage error): the command was right, the machine is out of room.
    _fill(tiny_fs)
    line = _cli_error(capsys, ["evaluate", tiny_best, "--out", str(tiny_fs / "eval"), "--workers", "0"], code=1)
    assert line.startswith("imgclf: error: no space left on device writing ") and "eval.json" in line, line
    _only(tiny_fs / "eval")


def test_cli_train_to_a_full_disk_is_one_line_exit_1(tmp_path, tiny_fs, make_folder, capsys):
    # The run's small files fit; its first checkpoint (smallcnn, about 1.1 MiB) does not.
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4, n_val=2)
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "smallcnn",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--out",
            str(tiny_fs),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert "Traceback" not in out + err
    line = err.strip().splitlines()[-1]  # after the run's own progress lines
    assert re.match(r"imgclf: error: no space left on device writing .*\.pt \(about 1\.1 MiB needed", line), line
    run = next(tiny_fs.iterdir())
    assert not [n for n in os.listdir(run) if n.endswith(".pt") or ".tmp" in n], os.listdir(run)


def test_scratch_folders_of_killed_commands_are_removed_by_the_next(tmp_path, monkeypatch):
    # an onnx-int8 export killed with SIGKILL left /tmp/imgclf-int8-XXXX behind for good
    import tempfile

    from imgclf.core.fileio import _writer_host, temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    host = _writer_host()
    stale = tmp_path / f"imgclf-int8-{dead_pid}-{host}-abcd1234"
    live = tmp_path / f"imgclf-int8-{os.getpid()}-{host}-efgh5678"
    foreign = tmp_path / f"imgclf-int8-{dead_pid}-00000000-ijkl9012"  # another host's: its PID means nothing here
    other = tmp_path / "imgclf-int8-notours"
    for d in (stale, live, foreign, other):
        d.mkdir()
        (d / "fp32.onnx").write_bytes(b"x")
    new = temp_dir("imgclf-int8-")
    assert os.path.isdir(new) and os.path.dirname(new) == str(tmp_path)
    assert not stale.exists()
    assert live.exists() and foreign.exists() and other.exists()


# ------------------------------------------------------------------------------------- the user's text files


@pytest.mark.parametrize(
    "data, where",
    [
        ("ok é\n€\n".encode(), None),
        (b"x: 1\ny: \xe9t\xe9\n", (2, 0xE9)),  # Latin-1
        ("path,label\n".encode("utf-16"), (1, 0xFF)),  # UTF-16's byte order mark
        (b"ok\nok\na\x00\n\xff", (3, 0x00)),  # a NUL byte before the bad one
        (b"fine\n\xe2\x82", (2, 0xE2)),  # a character cut short at the end
        # across the 1 MiB blocks it is read in: a character split between them, and a bad byte after it
        (b"a" * ((1 << 20) - 1) + "é".encode() + b"\nok\nbad \xff\n", (3, 0xFF)),
        (b"a" * ((1 << 20) - 1) + b"\xc3\nzz", (1, 0xC3)),  # the unfinished character is on line 1
    ],
)
def test_open_text_refuses_what_is_not_utf8_text_naming_line_and_byte(tmp_path, data, where):
    from imgclf.core.errors import UsageError
    from imgclf.core.fileio import open_text

    p = tmp_path / "f.txt"
    p.write_bytes(data)
    if where is None:
        with open_text(str(p), "--list") as f:
            assert f.read() == data.decode()
        return
    with pytest.raises(UsageError) as e:
        with open_text(str(p), "--list", fix="save it as UTF-8") as f:
            f.read()
    assert str(e.value) == f"--list '{p}' is not UTF-8 text (line {where[0]}: byte 0x{where[1]:02x}): save it as UTF-8"


def test_stops_deferred_holds_a_ctrl_c_until_the_block_ends():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground job has it
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with stops_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.extend(range(1000))  # the handler would run at the next bytecode boundary
                done.append("end")
        assert done[-1] == "end" and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with stops_deferred():  # an ignored Ctrl-C stays ignored
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
