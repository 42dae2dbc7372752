"""`imgclf train --apply-fixes`: the fixes applied before validation is carved, recorded in the run folder and
results.json, kept on resume, and a bad or different file refused in one line before any work."""

from __future__ import annotations

import csv
import hashlib
import json

from conftest import TINY_RUN, tiny_argv, train_tiny, usage_error

from imgclf.cli.main import main


def _fixes(path, text: str) -> str:
    path.write_text("path,kind,action,to\n" + text, encoding="utf-8")
    return str(path)


def _split_rows(run) -> dict[str, tuple[str, str]]:
    with open(run / "split.csv", newline="") as f:
        return {r["path"]: (r["label"], r["split"]) for r in csv.DictReader(f)}


def test_train_applies_fixes_before_carving_and_records_them(tmp_path, make_folder, capsys):
    data = make_folder(tmp_path / "d", layout="flat", classes=("cat", "dog"), n=8, size=8)
    fixes = _fixes(
        tmp_path / "fixes.csv",
        "cat/000.png,label,relabel,dog\ncat/001.jpg,outlier,drop,\ndog/002.png,near-duplicate,keep,\nold.png,label,drop,\n",
    )
    train_tiny(tmp_path, str(data), "r", epochs=1, apply_fixes=fixes)
    run = tmp_path / "runs" / "r"
    results = json.loads((run / "results.json").read_text())
    rec = results["fixes"]
    assert rec["sha256"] == hashlib.sha256(open(fixes, "rb").read()).hexdigest()
    assert (rec["dropped"], rec["relabelled"], rec["kept"], rec["unmatched"], rec["rows_applied"]) == (1, 1, 1, 1, 2)
    with open(run / "fixes_applied.csv", newline="") as f:
        assert [(r["path"], r["action"]) for r in csv.DictReader(f)] == [
            ("cat/000.png", "relabel"),
            ("cat/001.jpg", "drop"),
        ]
    split = _split_rows(run)  # train and the carved val: the dropped image in neither, the relabelled one a dog
    assert str(data / "cat/001.jpg") not in split and len(split) == 15
    assert split[str(data / "cat/000.png")][0] == "dog"
    # resumed with the same file: it goes on; with another: one line, exit 2, nothing touched
    other = _fixes(tmp_path / "other.csv", "cat/002.png,label,drop,\n")
    before = sorted(p.name for p in run.iterdir())
    line = usage_error(capsys, ["train", "--resume", str(run / "last.pt"), "--epochs", "2", "--apply-fixes", other])
    assert "was started with --apply-fixes" in line and "resume without --apply-fixes" in line
    assert sorted(p.name for p in run.iterdir()) == before
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "--apply-fixes", fixes, "-q"]) == 0
    capsys.readouterr()
    assert json.loads((run / "results.json").read_text())["fixes"]["sha256"] == rec["sha256"]
    # the file edited after the run started: refused on resume
    _fixes(tmp_path / "fixes.csv", "cat/004.png,label,drop,\n")
    line = usage_error(capsys, ["train", "--resume", str(run / "last.pt"), "--epochs", "3"])
    assert "changed since" in line and "fixes_applied.csv" in line


def test_a_bad_fixes_file_is_refused_before_any_work(tmp_path, make_folder, capsys):
    data = make_folder(tmp_path / "d", layout="flat", classes=("cat", "dog"), n=4, size=8)
    out = tmp_path / "runs"
    for text, says in [
        ("cat/000.png,label,rename,\n", "line 2: unknown action 'rename'"),
        ("cat/000.png,label,relabel,cow\n", "line 2: 'cow' is not a class of the data"),
    ]:
        fixes = _fixes(tmp_path / "f.csv", text)
        argv = ["train", *tiny_argv(data=str(data), out=str(out), name="x", epochs=1, apply_fixes=fixes)]
        assert says in usage_error(capsys, argv)
        assert not (out / "x").exists() or not any((out / "x").iterdir())
    assert "not found" in usage_error(
        capsys, ["train", *tiny_argv(data=str(data), out=str(out), epochs=1, apply_fixes=str(tmp_path / "no.csv"))]
    )
    assert TINY_RUN["model"] == "test_tiny"
