"""--group-by: group keys from a manifest column or a pattern over the paths, the carved split that keeps every
group on one side, the refusals, `check`'s group-leak findings, and merging two groupings."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import usage_error

from imgclf.cli.main import main
from imgclf.core.errors import DataError, UsageError
from imgclf.data.check import check_data
from imgclf.data.groups import (
    GroupBy,
    check_group_by,
    group_keys,
    grouped_split,
    leaked_groups,
    merge_groups,
    names_of,
    parse_group_by,
)
from imgclf.data.sources import csv_source, open_source


def objects_folder(root, image_of_class, shots=(3, 4, 2, 5, 3, 4, 2, 3), classes=("cat", "dog", "fox")):
    """ROOT/CLASS/oNN_sK.png: objects of uneven sizes (the shots of each), numbered across classes."""
    rng = np.random.default_rng(0)
    n = 0
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for k in shots:
            for s in range(k):
                image_of_class(ci, 8, rng=rng).save(root / c / f"o{n:02d}_s{s}.png")
            n += 1
    return root


def manifest(path, rows, header=("path", "label", "split", "subject")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def keys_by_split(src, pattern=r"(o\d+)_s"):
    by = GroupBy(pattern, pattern=re.compile(pattern))
    return {n: group_keys(names_of(s, src.base()), by).keys for n, s in src.splits.items()}


# ----------------------------------------------------------------------------------------------- keys


def test_a_pattern_names_groups_by_its_first_group_or_its_whole_match():
    names = ["cat/o01_s0.png", "cat/o01_s1.png", "dog/o02_s0.png", "dog/stray.png"]
    g = group_keys(names, parse_group_by(r"(o\d+)_s"))
    assert g.keys == ["o01", "o01", "o02", "dog/stray.png"]  # the unmatched path is a group of its own
    assert g.own == 1 and g.own_example == "dog/stray.png"
    assert "1 of the 4 train images do not match pattern" in g.own_note("train")
    assert group_keys(names, parse_group_by(r"o\d+")).keys[:3] == ["o01", "o01", "o02"]  # no group: the match


def test_a_csv_column_names_groups_and_csv_source_keeps_the_other_columns(tmp_path, image_of_class):
    for i in range(4):
        image_of_class(i % 2, 8, rng=np.random.default_rng(i)).save(tmp_path / f"{i}.png")
    rows = [(f"{i}.png", "ab"[i % 2], "train", ["p1", "p1", "p2", ""][i]) for i in range(4)]
    path = manifest(tmp_path / "m.csv", rows, header=("path", "label", "split", "Subject"))
    split = csv_source(path).splits["train"]
    assert split.columns == {"subject": ["p1", "p1", "p2", ""]}  # headers are read lower-case
    assert split.subset([2, 0]).columns == {"subject": ["p2", "p1"]}
    by = parse_group_by("Subject", ["subject"])
    assert by.column == "subject"
    g = group_keys(names_of(split, str(tmp_path)), by, split.columns)
    assert g.keys == ["p1", "p1", "p2", "3.png"] and g.own == 1  # an empty cell: a group of its own
    # a manifest without other columns is read as before: no columns at all
    plain = manifest(tmp_path / "plain.csv", [(r[0], r[1]) for r in rows], header=("path", "label"))
    assert csv_source(plain).splits["train"].columns is None


def test_names_are_relative_to_the_data_folder_and_ids_in_memory(tmp_path, image_of_class):
    objects_folder(tmp_path / "d", image_of_class, shots=(2, 2))
    src = open_source(str(tmp_path / "d"))
    assert all(n.startswith(("cat/", "dog/", "fox/")) for n in names_of(src.splits["train"], src.base()))
    digits = open_source("digits")
    assert names_of(digits.splits["train"], digits.base())[0].startswith("digits:")


# ----------------------------------------------------------------------------------------------- refusals


def test_bad_group_by_is_refused_in_one_line(tmp_path, image_of_class, capsys):
    d = objects_folder(tmp_path / "d", image_of_class, shots=(2, 2))
    line = usage_error(capsys, ["check", str(d), "--group-by", "(o\\d+"])
    assert "not a column and not a regular expression" in line and "fix the pattern" in line
    line = usage_error(capsys, ["check", str(d), "--group-by", "zebra_(\\d+)"])
    assert "matches none of the 12 paths" in line and "e.g. 'cat/o00_s0.png'" in line
    files = [f"{c}/o{4 * i:02d}_s{s}.png" for i, c in enumerate(("cat", "dog", "fox")) for s in (0, 1)]
    m = manifest(d / "m.csv", [(f, f.split("/")[0], "train", "") for f in files])
    line = usage_error(capsys, ["check", str(m), "--group-by", "subject"])
    assert "column 'subject'" in line and "is empty in all 6 rows" in line
    with pytest.raises(UsageError, match="empty"):
        parse_group_by("  ")


def test_check_group_by_reads_only_the_manifests_header(tmp_path):
    m = manifest(tmp_path / "m.csv", [("missing.png", "a", "train", "p1")])
    assert check_group_by("SUBJECT", str(m)).column == "subject"
    assert check_group_by(r"(\w+)_", str(m)).pattern is not None
    with pytest.raises(UsageError, match="the columns of .* are label, path, split, subject"):
        check_group_by("[", str(m))


def test_a_class_held_in_one_group_cannot_be_split(tmp_path, image_of_class):
    d = objects_folder(tmp_path / "d", image_of_class, shots=(3, 3, 3))
    for p in (d / "fox").iterdir():  # every fox image in one object
        p.rename(p.with_name("o99" + p.name[3:]))
    with pytest.raises(DataError, match="class 'fox' has all its images in group 'o99'.*give a val/ folder"):
        open_source(str(d), group_by=r"(o\d+)_s")
    with pytest.raises(DataError, match="all 4 training images in one group"):
        grouped_split([0, 0, 1, 1], ["g"] * 4, ["a", "b"], val_fraction=0.5, seed=0)


# ----------------------------------------------------------------------------------------------- carving


@pytest.mark.parametrize("seed", range(8))
def test_a_carved_split_never_splits_a_group_and_keeps_every_class(tmp_path, image_of_class, seed):
    d = objects_folder(tmp_path / "d", image_of_class)
    src = open_source(str(d), group_by=r"(o\d+)_s", seed=seed, val_fraction=0.25)
    keys = keys_by_split(src)
    assert leaked_groups(keys) == {}
    assert src.grouping["on_several_splits"] == 0 and src.grouping["split"] == "carved by group"
    assert src.grouping["groups"] == 24 and sum(src.grouping["per_split"].values()) == 24
    for name in ("train", "val"):
        assert set(src.splits[name].labels) == {0, 1, 2}
    n = len(src.splits["train"]) + len(src.splits["val"])
    assert n == 78 and 0.1 < len(src.splits["val"]) / n < 0.4
    assert src.val_origin == "carved" and "StratifiedGroupKFold fold" in src.notes[-1]
    again = open_source(str(d), group_by=r"(o\d+)_s", seed=seed, val_fraction=0.25)
    assert again.splits["val"].paths == src.splits["val"].paths  # seeded: the same split


def test_grouped_carving_keeps_the_classes_proportions_roughly():
    rng = np.random.default_rng(1)
    labels, keys = [], []
    for g in range(300):  # 300 groups of 1-6 images; classes 60/30/10 %
        c = rng.choice(3, p=[0.6, 0.3, 0.1])
        k = int(rng.integers(1, 7))
        labels += [int(c)] * k
        keys += [f"g{g}"] * k
    tr, va, how = grouped_split(labels, keys, ["a", "b", "c"], val_fraction=0.2, seed=3)
    y = np.asarray(labels)
    assert not set(np.asarray(keys)[tr]) & set(np.asarray(keys)[va])
    assert abs(len(va) / len(y) - 0.2) < 0.03
    whole, val = np.bincount(y, minlength=3) / len(y), np.bincount(y[va], minlength=3) / len(va)
    assert np.abs(whole - val).max() < 0.03, (whole, val)
    assert "fold" in how and "seed 3" in how


def test_without_group_by_the_split_is_todays(tmp_path, image_of_class):
    d = objects_folder(tmp_path / "d", image_of_class)
    src = open_source(str(d), seed=2)
    assert src.grouping is None and src.notes == [
        f"validation: {len(src.splits['val'])} images carved from train (stratified, fraction 0.2, seed 2)"
    ]


def test_the_datas_own_split_is_kept_and_its_leaks_counted(tmp_path, image_of_class):
    d = objects_folder(tmp_path / "d" / "train", image_of_class, shots=(2, 2, 2)).parent
    (d / "val" / "cat").mkdir(parents=True)
    (d / "train" / "cat" / "o01_s1.png").rename(d / "val" / "cat" / "o01_s1.png")
    src = open_source(str(d), group_by=r"(o\d+)_s")
    assert len(src.splits["val"]) == 1  # not re-split
    g = src.grouping
    assert g["split"] == "the data's own" and g["on_several_splits"] == 1 and g["examples"] == ["o01"]


# ----------------------------------------------------------------------------------------------- check


def test_check_reports_a_group_leak_per_group_on_several_splits(tmp_path, image_of_class, capsys):
    d = objects_folder(tmp_path / "d" / "train", image_of_class, shots=(2, 2, 2)).parent
    (d / "val" / "dog").mkdir(parents=True)
    (d / "train" / "dog" / "o04_s0.png").rename(d / "val" / "dog" / "o04_s0.png")
    (d / "train" / "cat" / "stray.png").write_bytes((d / "train" / "cat" / "o00_s0.png").read_bytes())
    report = check_data(str(d), workers=1, group_by=r"(o\d+)_s")
    leaks = [f for f in report.errors if f.kind == "group-leak"]
    assert len(leaks) == 1 and leaks[0].group == "o04"
    assert leaks[0].paths == ["train/dog/o04_s1.png", "val/dog/o04_s0.png"]
    assert "is in train and val" in leaks[0].detail
    assert report.summary["groups"]["on_several_splits"] == 1 and report.summary["groups"]["own_groups"] == 1
    assert (
        "1 of the 18 train images do not match pattern '(o\\d+)_s' (e.g. 'train/cat/stray.png')" in report.format_text()
    )
    assert main(["check", str(d), "--group-by", r"(o\d+)_s", "--json", "--workers", "1"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [f["group"] for f in out["errors"] if f["kind"] == "group-leak"] == ["o04"]
    # without --group-by: no group findings, no groups in the summary
    plain = check_data(str(d), workers=1)
    assert not [f for f in plain.errors + plain.warnings if f.kind == "group-leak"]
    assert "groups" not in plain.summary


def test_check_groups_a_manifest_by_its_column(tmp_path, image_of_class, capsys):
    for i in range(6):
        image_of_class(i % 2, 8, rng=np.random.default_rng(i)).save(tmp_path / f"{i}.png")
    rows = [(f"{i}.png", "ab"[i % 2], "val" if i >= 4 else "train", f"p{i % 3}") for i in range(6)]
    m = manifest(tmp_path / "m.csv", rows)
    report = check_data(str(m), workers=1, group_by="subject")
    leaks = {f.group: f.paths for f in report.errors if f.kind == "group-leak"}
    assert leaks == {"p1": ["1.png", "4.png"], "p2": ["2.png", "5.png"]}
    assert main(["check", str(m), "--group-by", "subject", "--workers", "1"]) == 1
    assert "group-leak" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- merging


def test_merge_groups_joins_images_linked_by_either_grouping():
    user = ["a", "a", "b", "c", "d", "e"]
    near = [None, "nd-1", "nd-1", None, "nd-2", "nd-2"]  # 1~2 joins a and b; 4~5 joins d and e
    merged = merge_groups(user, near)
    assert merged == ["a", "a", "a", "c", "d", "d"]
    assert Counter(merge_groups([None, None], [None, "x"])) == Counter(["#0", "x"])
    with pytest.raises(ValueError, match="same images"):
        merge_groups(["a"], [])


def test_check_group_by_imports_no_torch(tmp_path, image_of_class):
    d = objects_folder(tmp_path / "d", image_of_class, shots=(2, 2))
    script = (
        "import contextlib, io, sys\n"
        "from imgclf.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(sys.argv[1:])\n"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    src = Path(__file__).resolve().parents[3] / "src"
    res = subprocess.run(
        [sys.executable, "-c", script, "check", str(d), "-q", "--group-by", r"(o\d+)_s"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "IMGCLF_CACHE": str(tmp_path / "cache")},
        timeout=120,
        check=False,
    )
    assert res.stdout.strip().splitlines()[-1] == "0 []", res.stderr
