"""What a hostile user found (issue 10): damaged and mismatched checkpoints, temporary files left by SIGKILL, a
full disk, library warnings on the console, a top-5 that means nothing, half-epoch ticks and a switched backend."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import CheckpointError, DiskFullError
from imgclf.models.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from imgclf.models.registry import build_model

PREPROCESS = {"img_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands in the test's own folder


def _ckpt(model_name: str = "test_tiny", classes=("cat", "dog", "fox"), **kw) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, len(classes))
    return make_checkpoint(model, model_name=model_name, classes=list(classes), preprocess=PREPROCESS, config={}, **kw)


def _image(tmp_path: Path) -> str:
    from PIL import Image

    p = tmp_path / "one.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(p)
    return str(p)


def _cli_error(capsys, argv, code: int = 2) -> str:
    """Run the CLI; it must fail with `code` and exactly one line on stderr, no traceback."""
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err + out
    return lines[0]


def _one_clear_line(message: str) -> None:
    """One line, ending in a fix (after a colon or a semicolon), never torch's unsafe advice."""
    assert "\n" not in message, message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message, message
    assert not message.endswith((":", ",", "(")), message
    assert re.search(r"[:;] (use|pass|copy|upgrade|check|make)\b", message), f"no fix in: {message}"


# ----------------------------------------------------------------------------------------------- defect 3, 8: checkpoints


def _write_bad_file(kind: str, tmp_path: Path) -> Path:
    p = tmp_path / f"{kind}.pt"
    rng = np.random.default_rng(3)
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":  # a real checkpoint cut in half, as an interrupted copy leaves it
        save_checkpoint(_ckpt(), str(p))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "random":  # random bytes named .pt (first byte neither a zip's 'P' nor a pickle's 0x80)
        p.write_bytes(b"\x17" + rng.bytes(4095))
    elif kind == "random-pickle-start":  # random bytes that happen to start like torch's older format
        p.write_bytes(b"\x80\x02" + rng.bytes(4094))
    elif kind == "plain-pickle":  # pickle.dump of plain data, not torch.save
        p.write_bytes(pickle.dumps({"classes": ["a"]}, protocol=4))
    elif kind == "zip":  # a zip archive that torch.save did not write
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "hello")
    return p


@pytest.mark.parametrize(
    "kind, says",
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is truncated"),
        ("random", "is not a PyTorch checkpoint (not a zip archive"),
        ("random-pickle-start", "is not a readable PyTorch checkpoint"),
        ("plain-pickle", "is not a readable PyTorch checkpoint"),
        ("zip", "is not a readable PyTorch checkpoint"),
    ],
)
def test_damaged_file_is_one_clear_line(kind, says, tmp_path, capsys):
    # Before: the empty file raised "IndexError: list index out of range"; random bytes were "Python objects
    # that could run code" with torch's advice to load them with weights_only=False; a truncated file's message
    # stopped mid-sentence.
    p = _write_bad_file(kind, tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(p))
    msg = str(e.value)
    assert says in msg and str(p) in msg, msg
    assert "could run code" not in msg and "refused" not in msg, msg
    _one_clear_line(msg)
    for argv in (["predict", str(p), _image(tmp_path)], ["evaluate", str(p)]):
        line = _cli_error(capsys, argv)
        assert says in line, line


def test_load_shows_no_library_warning(tmp_path, recwarn):
    # torch warns "Detected pickle protocol 4 ..." (a UserWarning) while it reads such a file; that reached the
    # console of `imgclf predict` without --verbose.
    p = _write_bad_file("plain-pickle", tmp_path)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(p))
    save_checkpoint(_ckpt(), str(tmp_path / "good.pt"))
    load_checkpoint(str(tmp_path / "good.pt"))
    assert [str(w.message) for w in recwarn] == []


def test_unsafe_pickle_is_refused_by_name(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "imgclf-checkpoint", "payload": zipfile.ZipInfo("x")}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(p))
    msg = str(e.value)
    assert msg.startswith(f"refused to load '{p}'") and "(zipfile.ZipInfo)" in msg, msg
    _one_clear_line(msg)


def _edited(tmp_path: Path, name: str, edit) -> Path:
    ck = _ckpt()
    edit(ck)
    p = tmp_path / name
    save_checkpoint(ck, str(p))
    return p


@pytest.mark.parametrize(
    "name, edit, says",
    [
        # fewer class names than the head has outputs: predicting class 2 raised IndexError before
        (
            "short-names.pt",
            lambda ck: ck.update(classes=["cat", "dog"]),
            "lists 2 class names, but its model entry says 3",
        ),
        (
            "short-head.pt",
            lambda ck: ck["state_dict"].update({"fc.weight": torch.zeros(2, 8), "fc.bias": torch.zeros(2)}),
            "its head (fc) has 2 outputs",
        ),
        ("no-classes.pt", lambda ck: ck.pop("classes"), "missing 'classes'"),
        ("no-weight.pt", lambda ck: ck["state_dict"].pop("stem.0.weight"), "1 missing, such as 'stem.0.weight'"),
        ("bad-model.pt", lambda ck: ck.update(model="test_tiny"), "damaged entries, 'model'"),
        ("twice.pt", lambda ck: ck.update(classes=["cat", "cat", "fox"]), "names a class twice (cat)"),
        ("unknown.pt", lambda ck: ck["model"].update(name="test_tiny2"), "model named 'test_tiny2'"),
    ],
)
def test_inconsistent_checkpoint_is_one_clear_line(name, edit, says, tmp_path, capsys):
    p = _edited(tmp_path, name, edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(p))
    msg = str(e.value)
    assert says in msg and str(p) in msg, msg
    _one_clear_line(msg)
    line = _cli_error(capsys, ["predict", str(p), _image(tmp_path)])
    assert says in line


def test_weights_of_another_architecture_say_which(tmp_path, capsys):
    # smallcnn's weights under test_tiny's name. Before: "checkpoint weights do not fit model test_tiny: Error(s)
    # in loading state_dict for TestTiny:" and nothing more.
    ck = _ckpt("smallcnn")
    ck["model"]["name"] = "test_tiny"
    p = tmp_path / "other.pt"
    save_checkpoint(ck, str(p))
    line = _cli_error(capsys, ["predict", str(p), _image(tmp_path)])
    assert "look like smallcnn's, not those of the test_tiny it names" in line, line
    assert re.search(r"\d+ missing, such as '[\w.]+'; \d+ unexpected, such as '[\w.]+'", line), line
    assert "Error(s) in loading" not in line
    _one_clear_line(line)


def test_load_weights_explains_a_mismatch_after_validation(tmp_path):
    # The last line of defence (a model built for other data, as a resumed run with changed classes would):
    # load_state_dict's many-line report becomes one line.
    from imgclf.models.checkpoint import load_weights

    ck = _ckpt()
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model("test_tiny", 5), ck, "last.pt")
    msg = str(e.value)
    assert "'fc.weight' [3, 8] where test_tiny needs [5, 8]" in msg, msg
    _one_clear_line(msg)


def test_good_checkpoint_still_loads(tmp_path):
    p = tmp_path / "good.pt"
    save_checkpoint(_ckpt(), str(p))
    model = model_from_checkpoint(load_checkpoint(str(p)))
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


# ----------------------------------------------------------------------------------------------- defect 4: stale temporary files


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


# ----------------------------------------------------------------------------------------------- defect 7: a full disk


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


# ----------------------------------------------------------------------------------------------- defect 9: warnings, top-5


def test_metrics_two_classes_one_never_predicted_no_warning(recwarn):
    # A model that always answers class 0: precision and F1 of class 1 are 0/0, reported as 0.
    from imgclf.evaluation.metrics import compute_metrics

    m = compute_metrics(torch.tensor([[2.0, 0.0]] * 6), torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert m["top5_accuracy"] is None
    assert [str(w.message) for w in recwarn] == []


def test_top5_only_above_five_classes(recwarn):
    # Before: with exactly 5 classes top-5 was 1.0 whatever the model did (and sklearn said so with an
    # UndefinedMetricWarning on the console).
    from imgclf.evaluation.metrics import compute_metrics, format_report

    g = torch.Generator().manual_seed(0)
    for n, has_top5 in ((5, False), (6, True)):
        logits = torch.randn(30, n, generator=g)
        labels = torch.arange(30) % n
        m = compute_metrics(logits, labels, [f"c{i}" for i in range(n)])
        assert (m["top5_accuracy"] is not None) == has_top5, (n, m["top5_accuracy"])
        assert ("top-5" in format_report(m)) == has_top5
    want = float((logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean())
    assert m["top5_accuracy"] == pytest.approx(want)
    assert [str(w.message) for w in recwarn] == []


def test_metrics_one_class_no_warning(recwarn):
    from imgclf.evaluation.metrics import compute_metrics

    m = compute_metrics(torch.tensor([[1.0]] * 3), torch.tensor([0, 0, 0]), ["only"])
    assert m["confusion_matrix"] == [[3]]
    assert [str(w.message) for w in recwarn] == []


CJK = ["猫", "狗"]


def test_plots_with_cjk_class_names_no_warning(tmp_path, recwarn):
    # Before: "Glyph 29483 (\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans." for every label.
    from imgclf.evaluation import plots

    plots.plot_confusion(np.array([[3, 1], [0, 2]]), CJK, str(tmp_path / "cm.png"), title="宠物 val")
    img = np.zeros((16, 16, 3), np.uint8)
    plots.plot_misclassified([img, img], CJK, CJK[::-1], [0.9, 0.8], str(tmp_path / "mis.png"))
    assert [str(w.message) for w in recwarn] == []
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "mis.png").stat().st_size > 0
    # drawn with a font that has it, or spelled out; never a row of identical boxes
    assert plots.label("猫 cat") in ("猫 cat", "U+732B cat")


def test_plots_draw_class_names_as_plain_text(tmp_path):
    # Two `$` in a class name made matplotlib parse it as mathtext: "ParseSyntaxException: Expected
    # \frac{num}{den}" ended `evaluate` after every image had been scored.
    from imgclf.evaluation import plots

    names = ["a$\\frac{$b", "$5 & $10"]
    plots.plot_confusion(np.array([[1, 0], [0, 1]]), names, str(tmp_path / "cm.png"), title="$x$")
    plots.plot_misclassified([np.zeros((16, 16, 3), np.uint8)], names[:1], names[1:], [0.5], str(tmp_path / "mis.png"))
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "mis.png").stat().st_size > 0


def test_evaluate_cjk_classes_one_never_predicted_no_warning(tmp_path, make_folder, recwarn):
    # The whole `evaluate` path, plots included, for a model that never predicts its second class.
    from imgclf.evaluation.command import evaluate

    data = make_folder(tmp_path / "d", classes=tuple(CJK), n=4, n_val=3)
    model = build_model("test_tiny", 2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([1.0, 0.0]))
    ck = make_checkpoint(model, model_name="test_tiny", classes=CJK, preprocess=PREPROCESS, config={"data": str(data)})
    save_checkpoint(ck, str(tmp_path / "one.pt"))
    m = evaluate(
        str(tmp_path / "one.pt"), split="val", out=str(tmp_path / "e"), workers=0, device="cpu", precision="fp32"
    )
    assert m["per_class"][CJK[1]]["precision"] == 0.0
    assert {"eval.json", "confusion_matrix.png", "misclassified.png"} <= set(os.listdir(tmp_path / "e"))
    assert [str(w.message) for w in recwarn] == []


# ----------------------------------------------------------------------------------------------- defect 13: plots


def test_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    from imgclf.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.6, "val_macro_f1": 0.6}
        for e in (1, 2, 3)
    ]
    plots.plot_curves(rows, str(tmp_path / "curves.png"))
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), shown


def test_plots_leave_the_callers_backend_alone(tmp_path):
    # Before: importing imgclf.evaluation.plots called matplotlib.use("Agg"), switching a notebook's or GUI's backend.
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from imgclf.evaluation import plots
        rows = [{{"epoch": 1, "train_loss": 1, "val_loss": 1, "train_acc": 0.5, "val_acc": 0.5, "val_macro_f1": 0.5}}]
        plots.plot_curves(rows, {str(tmp_path / "c.png")!r})
        plots.plot_confusion(np.eye(2, dtype=int), ["a", "b"], {str(tmp_path / "m.png")!r})
        plots.plot_misclassified([], [], [], [], {str(tmp_path / "x.png")!r})
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "False"]
    assert all((tmp_path / n).stat().st_size > 0 for n in ("c.png", "m.png", "x.png"))


def test_a_fifo_named_as_weights_is_refused_without_blocking(tmp_path, tiny_data, capsys):
    # open_model used to read it and wait for a writer forever
    import os

    from imgclf.cli.main import main

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    img = next((tiny_data / "val" / "cat").iterdir())
    assert main(["predict", str(fifo), str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a regular file" in err and len(err.splitlines()) == 1


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
