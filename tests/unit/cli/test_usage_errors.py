"""Usage errors of every command: each is one line on stderr and exit 2, checked before
any work and before anything is written; and `predict` keeps every result it computed whatever else happens."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_argv, usage_error

import imgclf.infer.predict
from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.models.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder


def _nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture
def two_classes(tmp_path, make_folder) -> Path:
    return make_folder(tmp_path / "d", layout="flat", classes=("cat", "dog"), n=6)


def _train(data, out, *extra) -> list[str]:
    return ["train", *tiny_argv(data=data, epochs=1, out=out), *extra]


# ----------------------------------------------------------------------------------------------- train options


def test_one_class_is_refused_before_any_work(capsys, tmp_path, make_folder):
    data = make_folder(tmp_path / "one", layout="flat", classes=("cat",), n=6)
    line = usage_error(capsys, _train(data, tmp_path / "runs"))
    assert "one class, 'cat'" in line and "at least two" in line
    assert _nothing_in(tmp_path / "runs")


@pytest.mark.parametrize(
    "flag, value, expect",
    [
        ("--lr", "-1", "above 0"),
        ("--lr", "nan", "finite"),
        ("--img-size", "0", "at least 1"),
        ("--label-smoothing", "2", "at least 0 and below 1"),
        ("--momentum", "1", "below 1"),
        ("--epochs", "0", "at least 1"),
        ("--batch-size", "0", "at least 1"),
        ("--val-fraction", "1", "above 0 and below 1"),
        ("--weight-decay", "-0.1", "at least 0"),
        ("--gamma", "0", "above 0"),
        ("--brightness", "1.5", "at most 1"),
        ("--seed", "-1", "at least 0"),
        ("--workers", "-1", "at least 0"),
        ("--time-budget", "0", "above 0"),
        ("--max-steps", "0", "at least 1"),
    ],
)
def test_train_option_out_of_range(capsys, tmp_path, two_classes, flag, value, expect):
    line = usage_error(capsys, _train(two_classes, tmp_path / "runs", flag, value))
    assert flag in line and expect in line
    assert _nothing_in(tmp_path / "runs"), "a run folder was made for options that were refused"


def test_train_help_shows_the_ranges(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "cross-entropy label smoothing (1 would make every target uniform) [0.0] (at least 0 and below 1)" in text


def test_range_from_a_config_file(capsys, tmp_path, two_classes):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {two_classes}\nlabel_smoothing: 2\n")
    line = usage_error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "runs")])
    assert "'label_smoothing'" in line and "below 1" in line and "run.yaml" in line
    assert _nothing_in(tmp_path / "runs")


def test_range_through_the_python_api(tmp_path, two_classes):
    from imgclf import TrainConfig, train

    with pytest.raises(UsageError, match="'lr' must be above 0"):
        train(TrainConfig(data=str(two_classes), model="test_tiny", lr=-1.0, out=str(tmp_path / "runs")))
    assert _nothing_in(tmp_path / "runs")


@pytest.mark.parametrize("model, size, minimum", [("smallcnn", 3, 4), ("airnet_small", 24, 25), ("resnet18", 7, 32)])
def test_img_size_below_the_models_minimum(capsys, tmp_path, two_classes, model, size, minimum):
    argv = _train(two_classes, tmp_path / "runs", "--img-size", str(size))
    argv[argv.index("test_tiny")] = model
    line = usage_error(capsys, argv)
    assert f"--img-size {size}" in line and model in line and f"at least {minimum} px" in line
    assert _nothing_in(tmp_path / "runs")


def test_every_model_runs_at_its_declared_minimum():
    """The minimum the refusal quotes is one the network really takes (shapes only, on the meta device)."""
    for name, spec in REGISTRY.items():
        with torch.device("meta"):
            model = spec.builder(3).train()
            out = model(torch.zeros(2, 3, spec.min_img_size, spec.min_img_size))
        assert tuple(out.shape) == (2, 3), name


def test_images_smaller_than_the_model_takes_are_upscaled(capsys, tmp_path, make_folder):
    # 16 px images and airnet_small (which takes 25 px and up), no --img-size: the run uses 25 px
    data = make_folder(tmp_path / "d", layout="flat", classes=("cat", "dog"), n=6, size=16)
    argv = _train(data, tmp_path / "runs", "--name", "r")
    argv[argv.index("test_tiny")] = "airnet_small"
    assert main(argv) == 0, capsys.readouterr().err
    assert "img_size: 25" in (tmp_path / "runs" / "r" / "config.yaml").read_text()


def test_out_under_a_file_is_refused_before_any_work(capsys, tmp_path, two_classes):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    line = usage_error(capsys, _train(two_classes, blocker / "runs"))
    assert "--out" in line and "is a file" in line


# ----------------------------------------------------------------------------------------------- other commands


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["predict", "W", "IMG", "--batch-size", "0"], "--batch-size"),
        (["predict", "W", "IMG", "--top-k", "0"], "--top-k"),
        (["predict", "W", "IMG", "--top-k", "-1"], "--top-k"),
        (["evaluate", "W", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "W", "--workers", "-1"], "--workers"),
        (["export", "W", "--format", "onnx", "--verify-images", "0"], "--verify-images"),
        (["export", "W", "--format", "onnx-int8", "--calib-images", "0"], "--calib-images"),
        (["export", "W", "--format", "onnx", "--max-eval-images", "0"], "--max-eval-images"),
        (["bench", "W", "--iters", "0"], "--iters"),
        (["bench", "W", "--warmup", "-1"], "--warmup"),
        (["bench", "W", "--max-seconds", "0"], "--max-seconds"),
        (["bench", "W", "--threads", "0"], "--threads"),
        (["check", "DATA", "--workers", "-1"], "--workers"),
        (["samples", "digits", "--out", "OUT", "-n", "0"], "-n"),
        (["serve", "W", "--port", "70000"], "--port"),
    ],
)
def test_numeric_flags_of_every_command(capsys, tmp_path, tiny_best, tiny_data, argv, flag):
    img = next((tiny_data / "val" / "cat").iterdir())
    subst = {"W": tiny_best, "IMG": str(img), "DATA": str(tiny_data), "OUT": str(tmp_path / "samples")}
    line = usage_error(capsys, [subst.get(x, x) for x in argv])
    assert f"argument {flag}" in line and ("at least" in line or "above" in line or "at most" in line)
    assert _nothing_in(tmp_path / "samples")


def test_predictor_refuses_top_k_below_one(tiny_best, tiny_data):
    img = next((tiny_data / "val" / "cat").iterdir())
    with pytest.raises(UsageError, match="top_k must be at least 1"):
        imgclf.infer.predict.Predictor(tiny_best, device="cpu").predict(img, top_k=0)


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "W", "DATA", "--output", "BLOCKED/x.csv"],
        ["evaluate", "W", "--out", "BLOCKED/eval"],
        ["export", "W", "--format", "torchscript", "--out", "BLOCKED/m.ts"],
        ["samples", "digits", "--out", "BLOCKED/s"],
    ],
)
def test_output_under_a_file_is_refused_before_any_work(capsys, tmp_path, tiny_best, tiny_data, argv):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    subst = {"W": tiny_best, "DATA": str(tiny_data)}
    argv = [subst.get(x, x.replace("BLOCKED", str(blocker))) for x in argv]
    line = usage_error(capsys, argv)
    assert str(blocker) in line and "is a file" in line
    assert capsys.readouterr().out == ""


def test_predict_output_folder_is_made(capsys, tmp_path, tiny_best, tiny_data):
    out = tmp_path / "new" / "deeper" / "p.csv"
    assert main(["predict", tiny_best, str(tiny_data / "val"), "--output", str(out), "--device", "cpu"]) == 0
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 18


# ----------------------------------------------------------------------------------------------- predict keeps results


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_file_that_raises_anything_loses_only_its_own_result(capsys, tmp_path, tiny_best, tiny_data, monkeypatch):
    """A MemoryError while resizing one file (a 400000 x 1 PNG did this) is that file's error; the rest is kept."""
    folder = tiny_data / "val" / "dog"
    victim = sorted(folder.iterdir())[2]
    real = imgclf.infer.predict.load_image

    def load_image(path, *a, **kw):
        if Path(path) == victim:
            raise MemoryError()
        return real(path, *a, **kw)

    monkeypatch.setattr(imgclf.infer.predict, "load_image", load_image)
    out = tmp_path / "o.csv"
    assert main(["predict", tiny_best, str(folder), "--output", str(out), "--device", "cpu", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    rows = {r["path"]: r for r in _rows(out)}
    assert len(rows) == 6
    assert "MemoryError" in rows[str(victim)]["error"] and not rows[str(victim)]["label"]
    assert all(r["label"] and not r["error"] for p, r in rows.items() if p != str(victim))
    assert "1 of 6 images could not be read" in err


def test_an_error_late_in_the_run_keeps_the_rows_done(capsys, tmp_path, tiny_best, tiny_data, monkeypatch):
    calls = []
    real = imgclf.infer.predict.Predictor.logits

    def logits(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("the model broke")
        return real(self, batch)

    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", logits)
    out = tmp_path / "o.csv"
    assert (
        main(
            ["predict", tiny_best, str(tiny_data / "val"), "--output", str(out), "--device", "cpu", "--batch-size", "4"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "the model broke" in err and "stopped after 4 of 18 images" in err
    assert len(_rows(out)) == 4


def test_predict_fails_when_every_file_failed(capsys, tmp_path, tiny_best):
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    out = tmp_path / "o.csv"
    assert main(["predict", tiny_best, str(folder), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("\tERROR\t") == 2
    assert captured.err.strip().splitlines()[-1].startswith("imgclf: error: none of the 2 images")
    assert [r["error"] != "" for r in _rows(out)] == [True, True]


@pytest.mark.parametrize("with_output", [False, True])
def test_predict_into_a_closed_pipe_ends_quietly(tmp_path, tiny_best, tiny_data, with_output):
    """`imgclf predict ... | head -1`: the reader has gone; exit 141 (as a tool ended by SIGPIPE) with nothing on
    stderr; with --output the file is still written in full."""
    out = tmp_path / "o.csv"
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line: every write to w fails with EPIPE
    argv = [sys.executable, "-m", "imgclf", "predict", tiny_best, str(tiny_data / "val"), "--device", "cpu"]
    res = subprocess.run(
        argv + (["--output", str(out)] if with_output else []),
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        check=False,
    )
    os.close(w)
    assert res.returncode == 141, res.stderr
    assert res.stderr == ""
    if with_output:
        assert len(_rows(out)) == 18


# ----------------------------------------------------------------------------------------------- console


def test_train_says_its_result_once_and_nothing_with_quiet(capsys, tmp_path, two_classes):
    assert main(_train(two_classes, tmp_path / "runs", "--name", "loud")) == 0
    out, err = capsys.readouterr()
    both = out + err
    assert both.count("run directory") == 1 and both.count("best epoch") == 1
    assert main(_train(two_classes, tmp_path / "runs", "--name", "quiet", "-q")) == 0
    assert capsys.readouterr() == ("", "")


def test_predict_quiet_still_prints_the_predictions(capsys, tiny_best, tiny_data):
    assert main(["predict", tiny_best, str(tiny_data / "val" / "cat"), "-q", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and err == ""


# ------------------------------------------------------------------------------------------ the user's text files

# issue 22, defect 8: a text file the user names that is not UTF-8 text (a binary file, Latin-1, UTF-16, a NUL
# byte) raised a raw UnicodeDecodeError (exit 1), or torch's "embedded null byte". Each is one line, exit 2, that
# names the file, the line and the byte, before any work.
NOT_TEXT = {
    "latin-1": b"path,label\ncaf\xe9.png,cat\n",  # line 2: byte 0xe9
    "binary": b"path,label\n\x89PNG\r\n\x1a\n\x00\x00",  # a PNG's signature on line 2: byte 0x89
    "nul": b"path,label\na\x00b.png,cat\n",  # valid UTF-8, but no text holds a NUL: line 2, byte 0x00
}


@pytest.mark.parametrize("kind", list(NOT_TEXT))
@pytest.mark.parametrize(
    "argv, what",
    [
        (["train", "--config", "F", "--data", "DATA"], "config file"),
        (
            ["train", *tiny_argv(data="DATA", epochs=1, out="OUT"), "--curriculum", "easy-first", "--difficulty", "F"],
            "--difficulty",
        ),
        (["train", *tiny_argv(data="F", epochs=1, out="OUT")], "CSV"),
        (["check", "F"], "CSV"),
        (["evaluate", "W", "--data", "F", "--out", "OUT"], "CSV"),
        (["predict", "W", "--files-from", "F", "--output", "OUT/p.csv"], "--files-from"),
        (["select", "W", "--pool", "F", "--budget", "1", "--out", "OUT"], "pool CSV"),
        (
            ["select", "W", "--pool", "DATA/val", "--budget", "1", "--exclude", "F", "--out", "OUT"],
            "--exclude manifest",
        ),
    ],
)
def test_a_file_that_is_not_utf8_text_is_one_line_naming_it(capsys, tmp_path, tiny_best, tiny_data, argv, what, kind):
    f = tmp_path / "given.csv"
    f.write_bytes(NOT_TEXT[kind])
    out = tmp_path / "out"
    subst = {"F": str(f), "DATA": str(tiny_data), "W": tiny_best, "OUT": str(out)}
    argv = [subst.get(a, a.replace("DATA/", f"{tiny_data}/").replace("OUT/", f"{out}/")) for a in argv]
    line = usage_error(capsys, argv)
    byte = {"latin-1": "0xe9", "binary": "0x89", "nul": "0x00"}[kind]
    assert f"{what} '{f}' is not UTF-8 text (line 2: byte {byte}): " in line, line
    assert _nothing_in(out)


def test_utf8_with_a_byte_order_mark_is_text(capsys, tmp_path, tiny_data):
    """What Excel writes as "CSV UTF-8": a byte order mark first, skipped."""
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted((tiny_data / "train").rglob("*.png"))]
    f = tmp_path / "bom.csv"
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode())
    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbfepochs: 1\n")
    assert main(["check", str(f)]) == 0
    assert main(["train", "--config", str(config), *tiny_argv(data=str(f), out=str(tmp_path / "runs"))]) == 0
    capsys.readouterr()
