"""`imgclf.cli.main` in-process: exit codes, one-line errors, refusing unsafe checkpoints, models and check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import usage_error

from imgclf.cli.main import main
from imgclf.models.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder


def test_train_missing_data(capsys, tmp_path):
    line = usage_error(capsys, ["train", "--data", "/nonexistent", "--out", str(tmp_path / "runs")])
    assert "/nonexistent" in line and "not found" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_unknown_model(capsys, tmp_path, make_folder):
    data = make_folder(tmp_path / "d", n=4)
    line = usage_error(capsys, ["train", "--data", str(data), "--model", "resnet19", "--out", str(tmp_path / "runs")])
    assert "resnet19" in line and "resnet18" in line


def test_evaluate_unknown_split(capsys, tiny_best):
    line = usage_error(capsys, ["evaluate", tiny_best, "--split", "tset", "--workers", "1"])
    assert "tset" in line and "did you mean 'test'" in line


def test_train_empty_class(capsys, tmp_path, make_folder):
    data = make_folder(tmp_path / "d", n=4)
    for f in (data / "train" / "cat").iterdir():
        f.unlink()
    line = usage_error(capsys, ["train", "--data", str(data), "--model", "test_tiny", "--out", str(tmp_path / "runs")])
    assert "'cat'" in line and "no images" in line


def test_unknown_option_typo(capsys):
    line = usage_error(capsys, ["train", "--data", "/nonexistent", "--epcohs", "3"])
    assert "--epcohs" in line


def test_abbreviated_option_is_not_silently_accepted(capsys):
    # `--epoch` is a typo of --epochs. argparse's allow_abbrev would quietly read it as --epochs; the run
    # must instead stop with a usage error about the option (here the data does not exist either, so a run
    # that accepted the option would fail later with a data error instead, and this test would see that).
    line = usage_error(capsys, ["train", "--data", "/nonexistent", "--epoch", "3"])
    assert "--epoch" in line


def test_config_yaml_misspelled_key(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: /nonexistent\nepoch: 3\n")
    line = usage_error(capsys, ["train", "--config", str(cfg)])
    assert "'epoch'" in line and "did you mean 'epochs'" in line


# ----------------------------------------------------------------------------------------------- checkpoints


class _WritesFile:
    """Unpickling this calls open(path, 'w'): proof that the loader ran code from the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _image(tmp_path: Path) -> str:
    from PIL import Image

    p = tmp_path / "one.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(p)
    return str(p)


def test_malicious_checkpoint_is_refused(capsys, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "imgclf-checkpoint", "version": 1, "payload": _WritesFile(str(marker))}, evil)

    # Control: loading it the unsafe way really would run the payload, so the checks below mean something.
    control = tmp_path / "CONTROL"
    torch.save({"payload": _WritesFile(str(control))}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    img = _image(tmp_path)
    for argv in (["predict", str(evil), img], ["evaluate", str(evil)]):
        line = usage_error(capsys, argv)
        assert "refused" in line and "evil.pt" in line
        assert not marker.exists(), f"{argv[0]} ran code from the checkpoint"


def test_plain_state_dict_is_not_a_checkpoint(capsys, tmp_path):
    p = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), p)
    img = _image(tmp_path)
    for argv in (["predict", str(p), img], ["evaluate", str(p)]):
        line = usage_error(capsys, argv)
        assert "not an imgclf checkpoint" in line


def test_missing_checkpoint(capsys, tmp_path):
    line = usage_error(capsys, ["evaluate", str(tmp_path / "nope.pt")])
    assert "nope.pt" in line and "not found" in line


# ----------------------------------------------------------------------------------------------- models, check


def test_models_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert set(REGISTRY) <= names
    assert "11,689,512" in next(line for line in out.splitlines() if line.startswith("resnet18 "))


def test_models_json(capsys):
    import json

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(REGISTRY)


def test_check_clean_then_zero_byte(capsys, tmp_path, make_folder):
    data = make_folder(tmp_path / "d", n=3, n_val=2)
    assert main(["check", str(data), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 errors" in out
    (data / "train" / "dog" / "empty.jpg").write_bytes(b"")
    assert main(["check", str(data), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "zero-byte" in out and "train/dog/empty.jpg" in out


def test_check_missing_folder_isusage_error(capsys, tmp_path):
    usage_error(capsys, ["check", str(tmp_path / "nope")])


@pytest.mark.parametrize("where", ["sub", "top"])
def test_verbose_shows_traceback(capsys, tmp_path, where):
    argv = ["train", "--data", "/nonexistent", "--out", str(tmp_path / "runs")]
    argv = argv + ["--verbose"] if where == "sub" else ["--verbose"] + argv
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" in err and "DataError" in err
    assert "/nonexistent" in err.strip().splitlines()[-1]


def test_predict_output_with_unknown_extension_is_refused_before_any_work(tiny_best, tiny_data, tmp_path, capsys):
    out = tmp_path / "preds.txt"
    assert main(["predict", tiny_best, str(tiny_data), "--output", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "must end in .csv or .json" in captured.err
    assert not out.exists()


def test_sigterm_removes_temporary_files(tmp_path):
    """A command stopped by SIGTERM (kill, a scheduler, a container stopping) while writing its output exits
    143 with one line and leaves neither the output nor its temporary file behind."""
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import imgclf.cli.main as cli
        from imgclf.core.fileio import atomic_open

        def export(a):
            with atomic_open({str(out / "model.onnx")!r}, "wb") as f:
                f.write(b"half a model")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # the signal arrives here
            return 0

        cli.COMMANDS["export"] = export
        sys.exit(cli.main(["export", "weights.pt", "--format", "onnx"]))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 143, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "imgclf: terminated"
    assert "Traceback" not in res.stderr
    assert list(out.iterdir()) == []
