"""`--apply-fixes` on `imgclf check` (torch-free) and `imgclf evaluate`: the data as the fixes leave it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import usage_error

from imgclf.cli.main import main

SRC = Path(__file__).resolve().parents[3] / "src"


def _fixes(path, text: str) -> str:
    path.write_text("path,kind,action,to\n" + text, encoding="utf-8")
    return str(path)


def test_check_counts_the_data_as_the_fixes_leave_it(tmp_path, make_folder, capsys):
    data = make_folder(tmp_path / "d", classes=("cat", "dog"), n=4, n_val=2)
    fixes = _fixes(
        tmp_path / "f.csv",
        "train/cat/tr000.png,label,relabel,dog\ntrain/dog/tr001.jpg,outlier,drop,\nx.png,label,drop,\n",
    )
    assert main(["check", str(data), "--json", "-q"]) == 0
    plain = json.loads(capsys.readouterr().out)["summary"]
    assert main(["check", str(data), "--json", "-q", "--apply-fixes", fixes]) == 0
    fixed = json.loads(capsys.readouterr().out)["summary"]
    assert plain["classes_per_split"]["train"] == {"cat": 4, "dog": 4} and "fixes" not in plain
    assert fixed["classes_per_split"]["train"] == {"cat": 3, "dog": 4}  # one dog dropped, one cat now a dog
    assert fixed["images"] == plain["images"] - 1
    assert {k: fixed["fixes"][k] for k in ("dropped", "relabelled", "unmatched")} == {
        "dropped": 1,
        "relabelled": 1,
        "unmatched": 1,
    }
    assert main(["check", str(data), "-q", "--apply-fixes", fixes]) == 0
    assert "fixes applied from" in capsys.readouterr().out


def test_check_refuses_a_bad_fixes_file_in_one_line(tmp_path, make_folder, capsys):
    data = make_folder(tmp_path / "d", classes=("cat", "dog"), n=3)
    bad = _fixes(tmp_path / "f.csv", "train/cat/tr000.png,label,relabel,cow\n")
    line = usage_error(capsys, ["check", str(data), "--apply-fixes", bad])
    assert "line 2: 'cow' is not a class of the data" in line and bad in line


def test_check_with_fixes_imports_no_torch(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", n=3)
    fixes = _fixes(tmp_path / "f.csv", "train/cat/tr000.png,label,drop,\n")
    code = (
        "import sys; from imgclf.cli.main import main; rc = main(sys.argv[1:]); "
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "check", str(data), "-q", "--apply-fixes", fixes],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "IMGCLF_CACHE": str(tmp_path / "cache")},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "0 []"


def test_evaluate_with_fixes_evaluates_the_fixed_split_and_records_it(tmp_path, tiny_best, tiny_data, capsys):
    fixes = _fixes(tmp_path / "f.csv", "val/cat/va000.png,label,drop,\nval/dog/va001.jpg,label,relabel,fox\n")
    out = tmp_path / "ev"
    assert (
        main(["evaluate", tiny_best, "--split", "val", "--out", str(out), "--json", "-q", "--apply-fixes", fixes]) == 0
    )
    capsys.readouterr()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_images"] == 17 and ev["per_class"]["fox"]["support"] == 7 and ev["per_class"]["cat"]["support"] == 5
    assert ev["fixes"]["dropped"] == 1 and ev["fixes"]["relabelled"] == 1 and len(ev["fixes"]["sha256"]) == 64
    plain = tmp_path / "plain"
    assert main(["evaluate", tiny_best, "--split", "val", "--out", str(plain), "--json", "-q"]) == 0
    assert "fixes" not in json.loads((plain / "eval.json").read_text())
    bad = _fixes(tmp_path / "bad.csv", "val/cat/va000.png,label,remove,\n")
    line = usage_error(capsys, ["evaluate", tiny_best, "--out", str(tmp_path / "no"), "--apply-fixes", bad])
    assert "unknown action 'remove'" in line and not (tmp_path / "no").exists()
