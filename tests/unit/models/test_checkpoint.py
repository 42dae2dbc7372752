"""Damaged and mismatched checkpoints: each a clear line, no library warning, nothing unpickled that is not
plain data; a FIFO named as weights refused without blocking."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import CheckpointError, UsageError
from imgclf.models.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from imgclf.models.registry import build_model

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder

PREPROCESS = {"img_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


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


def _edited(tmp_path: Path, name: str, edit) -> Path:
    ck = _ckpt()
    edit(ck)
    p = tmp_path / name
    save_checkpoint(ck, str(p))
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


class _Payload:
    """What an attacker's checkpoint holds: unpickling it calls `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "func, named",
    [
        (os.system, f"{os.system.__module__}.system"),  # posix.system: a module torch blocks outright
        (eval, "eval"),  # builtins.eval: a global torch does not allow
    ],
)
def test_a_checkpoint_holding_code_is_refused_for_safety_by_name(func, named, tmp_path, capsys):
    # Before: an os.system payload was refused as "damaged, or not written by torch.save" (issue 22, defect 7).
    marker = tmp_path / "ran"
    p = tmp_path / "evil.pt"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    torch.save({"format": "imgclf-checkpoint", "payload": _Payload(func, arg)}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(p))
    msg = str(e.value)
    assert msg.startswith(f"refused to load '{p}' for safety: it holds ") and "code" in msg, msg
    assert f"({named}" in msg and "damaged" not in msg, msg
    _one_clear_line(msg)
    for argv in (["predict", str(p), _image(tmp_path)], ["evaluate", str(p)], ["export", str(p), "--format", "onnx"]):
        assert _cli_error(capsys, argv) == f"imgclf: error: {msg}"
    assert not marker.exists()  # nothing ran


def test_a_weights_file_holding_code_is_refused_for_safety_by_name(tmp_path):
    # Before: torch's own first line, which advises loading the file with weights_only set to False
    marker = tmp_path / "ran"
    p = tmp_path / "evil.pth"
    torch.save({"stem.0.weight": torch.zeros(1), "x": _Payload(os.system, f"touch {marker}")}, p)
    with pytest.raises(UsageError) as e:
        build_model("test_tiny", 3, pretrained=True, weights_file=str(p))
    msg = str(e.value)
    assert f"'{p}'" in msg and f"refused for safety: it holds code ({os.system.__module__}.system" in msg, msg
    assert "weights_only" not in msg and "\n" not in msg and not marker.exists()


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


def test_a_fifo_named_as_weights_is_refused_without_blocking(tmp_path, tiny_data, capsys):
    # open_model used to read it and wait for a writer forever

    from imgclf.cli.main import main

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    img = next((tiny_data / "val" / "cat").iterdir())
    assert main(["predict", str(fifo), str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a regular file" in err and len(err.splitlines()) == 1


def test_a_multilabel_checkpoint_records_its_task_and_thresholds(multilabel_ckpt):
    import numpy as np
    from PIL import Image

    from imgclf.data.sources import open_source
    from imgclf.infer.runtime import open_model

    r = open_model(multilabel_ckpt, device="cpu", precision="fp32")
    assert r.task == "multilabel" and r.thresholds == [0.5, 0.4, 0.6]
    assert r.metadata()["thresholds"] == [0.5, 0.4, 0.6]
    # the fixture's model has learnt the corners: its sigmoid scores rank the test images' labels well
    src = open_source(r.config["data"])
    test = src.splits["test"]
    x = torch.stack([torch.tensor(np.array(Image.open(p).convert("RGB")), dtype=torch.float32) for p in test.paths])
    p = r.probabilities(r.logits((x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25)).numpy()
    assert ((p >= 0.5) == (test.targets > 0)).mean() > 0.8
    assert (p >= 0).all() and (p <= 1).all() and not np.allclose(p.sum(1), 1)


@pytest.mark.parametrize(
    ("task", "temperature", "ok"),
    [
        ("multilabel", [0.5, 2.0, 1.0], True),
        ("multilabel", 1.5, True),
        ("multilabel", [0.5, 2.0], False),  # one per label: 3 labels
        ("multilabel", [0.5, -1.0, 1.0], False),
        ("single", [0.5, 2.0, 1.0], False),  # a list is a multi-label model's only
    ],
)
def test_a_temperature_list_is_a_multilabel_checkpoints_only(task, temperature, ok, tmp_path):
    from imgclf.models.checkpoint import temperature_of

    model = build_model("test_tiny", 3)
    pre = {"img_size": 16, "resize": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    more = {"task": "multilabel", "thresholds": [0.5] * 3} if task == "multilabel" else {}
    ck = make_checkpoint(model, model_name="test_tiny", classes=["a", "b", "c"], preprocess=pre, config={}, **more)
    ck["temperature"] = temperature
    save_checkpoint(ck, str(tmp_path / "m.pt"))
    if ok:
        assert temperature_of(load_checkpoint(str(tmp_path / "m.pt"))) == temperature
    else:
        with pytest.raises(CheckpointError, match="'temperature'"):
            load_checkpoint(str(tmp_path / "m.pt"))


def test_a_ctrl_c_during_the_write_comes_once_the_checkpoint_is_whole(tmp_path, monkeypatch):
    """A Ctrl-C inside torch.save (its zip writer made it a RuntimeError, "unexpected pos", and left no file) is
    acted on after the file is written and renamed into place."""
    import signal

    real_save = torch.save

    def save_with_a_ctrl_c(obj, f):
        f.write(b"")
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_with_a_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(tmp_path / "last.pt"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
