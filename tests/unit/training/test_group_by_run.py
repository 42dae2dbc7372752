"""`imgclf train --group-by`: checked before any work, applied where the run carves validation, recorded in
config.yaml, results.json and the log; the data's own split kept, its leaks warned about."""

from __future__ import annotations

import csv
import logging
import os
import re

import numpy as np
import pytest
import yaml
from conftest import tiny_argv, train_tiny, usage_error

from imgclf.infer.logits import open_model_data

PATTERN = r"(o\d+)_s"


@pytest.fixture
def objects(tmp_path, image_of_class):
    """ROOT/CLASS/oNN_sK.png: 3 classes x 5 objects x 3 shots, 16 px."""
    rng, root = np.random.default_rng(0), tmp_path / "objects"
    for ci, c in enumerate(("cat", "dog", "fox")):
        (root / c).mkdir(parents=True)
        for k in range(5):
            for s in range(3):
                image_of_class(ci, 16, rng=rng).save(root / c / f"o{5 * ci + k:02d}_s{s}.png")
    return root


def test_train_group_by_carves_by_group_and_records_it(tmp_path, objects, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    r = train_tiny(tmp_path, str(objects), "grouped", epochs=1, group_by=PATTERN, val_fraction=0.2)
    run = tmp_path / "runs" / "grouped"
    assert yaml.safe_load((run / "config.yaml").read_text())["group_by"] == PATTERN
    groups = r["groups"]
    assert groups["on_several_splits"] == 0 and groups["groups"] == 15 and groups["split"] == "carved by group"
    with open(run / "split.csv", newline="") as f:
        rows = [(row["path"], row["split"]) for row in csv.DictReader(f)]
    sides: dict[str, set] = {}
    for path, split in rows:
        sides.setdefault(re.search(PATTERN, path).group(1), set()).add(split)
    assert len(sides) == 15 and all(len(s) == 1 for s in sides.values())
    assert {"train", "val"} == set().union(*sides.values())
    log = (run / "train.log").read_text()
    assert "groups (--group-by pattern '(o\\d+)_s'): 15; train 12, val 3; on more than one split: 0" in log
    assert "StratifiedGroupKFold" in caplog.text
    # evaluate, export, ... open the run's data as it did: the same grouped split, carved again
    _, val = open_model_data(yaml.safe_load((run / "config.yaml").read_text()), None, "val")
    assert set(val.paths) == {p for p, s in rows if s == "val"} and len(val) == r["best"]["num_images"]
    plain = train_tiny(tmp_path, str(objects), "plain", epochs=1)
    assert "groups" not in plain  # results.json as before without --group-by


def test_train_group_by_keeps_the_datas_own_split_and_warns_of_its_leaks(tmp_path, objects, caplog):
    val = tmp_path / "split"
    val.mkdir()
    os.rename(objects, val / "train")
    for c, k in (("cat", 0), ("dog", 5), ("fox", 10)):
        (val / "val" / c).mkdir(parents=True)
        (val / "train" / c / f"o{k:02d}_s0.png").rename(val / "val" / c / f"o{k:02d}_s0.png")
    r = train_tiny(tmp_path, str(val), "own", epochs=1, group_by=PATTERN)
    assert r["groups"]["on_several_splits"] == 3 and r["groups"]["split"] == "the data's own"
    assert r["best"]["num_images"] == 3  # the data's own val split, not re-split
    assert "puts 3 of its 15 groups on more than one split (e.g. 'o00', 'o05', 'o10')" in caplog.text


def test_a_bad_group_by_is_refused_before_any_work(tmp_path, objects, capsys):
    out = tmp_path / "runs"
    line = usage_error(capsys, ["train", *tiny_argv(data=str(objects), out=str(out), group_by="(o\\d+")])
    assert "not a column and not a regular expression" in line
    line = usage_error(capsys, ["train", *tiny_argv(data=str(objects), out=str(out), group_by="zebra")])
    assert "matches none of the 45 paths" in line
    assert not out.exists() or not any(out.iterdir())  # no run folder left behind
