"""`imgclf check --deep`'s options: refused in one line without --deep, the deep run's text and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder, usage_error

from imgclf.cli.main import main

pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize(
    "extra", [["--folds", "3"], ["--fixes", "f.csv"], ["--model", "resnet18"], ["--out", "o"], ["--device", "cpu"]]
)
def test_deep_options_without_deep_are_one_line(tmp_path, capsys, extra):
    d = make_image_folder(tmp_path / "d", layout="flat", n=3)
    line = usage_error(capsys, ["check", str(d), *extra])
    assert extra[0] in line and "only work" in line and "--deep" in line
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "o").exists()


def test_deep_with_a_model_without_pretrained_weights_is_one_line(tmp_path, capsys):
    d = make_image_folder(tmp_path / "d", layout="flat", n=3)
    assert "no pretrained weights" in usage_error(capsys, ["check", str(d), "--deep", "--model", "test_tiny"])


def test_check_deep_prints_the_suspects_and_where_the_files_are(tmp_path, capsys):
    d = make_image_folder(tmp_path / "d", layout="flat", classes=("red", "blue"), n=8, size=32)
    (d / "red" / "000.png").rename(d / "blue" / "wrong.png")
    argv = ["check", str(d), "--deep", "--folds", "3", "--fixes", "fx.csv", "--device", "cpu", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "blue/wrong.png: blue -> red (score" in out
    assert "folder: checks/d (check.json)" in out and "fixes: fx.csv" in out
    saved = json.loads((tmp_path / "checks" / "d" / "check.json").read_text())
    assert saved["ok"] and saved["summary"]["deep"]["labels"]["folds"] == 3
    assert "likely wrong (P(label wrong) >= 0.5" in out
    # one wrong label in 16 images: the row names the suggestion, to review (the classifier is not sure enough)
    assert (tmp_path / "fx.csv").read_text().splitlines()[1].startswith("blue/wrong.png,label,keep,blue,red,")


def test_deep_options_without_deep_are_refused_without_importing_torch(tmp_path):
    d = make_image_folder(tmp_path / "d", layout="flat", n=3)
    script = (
        "import sys; from imgclf.cli.main import main; rc = main(['check', sys.argv[1], '--fixes', 'f.csv']); "
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    src = Path(__file__).resolve().parents[3] / "src"
    res = subprocess.run(
        [sys.executable, "-c", script, str(d)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "IMGCLF_CACHE": str(tmp_path / "cache")},
        timeout=120,
        check=False,
    )
    assert res.stdout.strip().splitlines()[-1] == "2 []", res.stdout + res.stderr
    assert "only works with --deep" in res.stderr
