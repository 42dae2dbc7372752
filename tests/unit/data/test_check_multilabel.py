"""`imgclf check` on a multi-label manifest (data/check_multilabel.py) and fixes.csv applied to one (data/fixes.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.data.check import check_data
from imgclf.data.fixes import apply_fixes, read_fixes
from imgclf.data.multilabel import co_occurrence, label_counts
from imgclf.data.sources import open_source


def test_check_reports_labels_per_split_co_occurrence_and_images_without_labels(multilabel_csv):
    r = check_data(str(multilabel_csv))
    src = open_source(str(multilabel_csv), carve=False)
    s = r.summary
    assert r.ok and s["task"] == "multilabel" and s["classes"] == src.classes
    m = s["multilabel"]
    for name, split in src.splits.items():
        assert list(s["classes_per_split"][name].values()) == label_counts(split.targets).tolist()
        assert m["labels_per_image"][name]["none"] == int((split.targets.sum(1) == 0).sum())
        assert m["labels_per_image"][name]["images"] == len(split)
    co = co_occurrence(src.splits["train"].targets)
    top = m["co_occurrence_train"][0]
    a, b = (src.classes.index(x) for x in top["labels"])
    assert top["images"] == co[a, b] == max(co[i, j] for i in range(3) for j in range(i + 1, 3))
    no_label = [f for f in r.warnings if f.kind == "no-label"]
    assert len(no_label) == sum(v["none"] for v in m["labels_per_image"].values())
    counts = label_counts(src.splits["train"].targets)
    assert m["label_imbalance_ratio"] == round(counts.max() / counts.min(), 2)
    text = r.format_text()
    assert "labels seen together most in train" in text and "label imbalance" in text and "images " in text


def _manifest(tmp_path, multilabel_csv, rows: list[tuple[int, str, str]]):
    """A manifest of the fixture's images: (image index, label cell, split) per row."""
    images = sorted((multilabel_csv.parent / "img").glob("train_*.png"))
    lines = ["path,labels,split"] + [f"{images[i].resolve()},{cell},{split}" for i, cell, split in rows]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_check_warns_of_a_label_missing_from_a_split_on_every_image_or_rare(tmp_path, multilabel_csv):
    rows = [(i, "red|green" if i < 2 else "red", "train") for i in range(21)] + [(21, "red", "val")]
    r = check_data(str(_manifest(tmp_path, multilabel_csv, rows)))
    kinds = {(f.kind, tuple(f.paths)) for f in r.warnings}
    assert ("label-on-every-image", ("train:red",)) in kinds
    assert ("label-imbalance", ("train:red", "train:green")) in kinds  # 21 vs 2 images: over 10x
    assert ("empty-class", ("val:green",)) in kinds and r.ok
    assert r.summary["multilabel"]["positive_rate_train"] == {"green": round(2 / 21, 4), "red": 1.0}


def test_fixes_on_a_multilabel_source_drop_and_replace_label_sets(tmp_path, multilabel_csv):
    root = tmp_path / "data"
    shutil.copytree(multilabel_csv.parent, root)
    src = open_source(str(root / multilabel_csv.name), carve=False)
    train = src.splits["train"]
    before = train.targets.copy()
    (tmp_path / "fixes.csv").write_text(
        "path,action,to\n"
        f"{train.paths[0]},drop,\n"
        f"{train.paths[1]},relabel,red|blue\n"  # the new set, any order; replaces the old one
    )
    applied = apply_fixes(src, read_fixes(str(tmp_path / "fixes.csv"), src.classes))
    after = src.splits["train"]
    assert len(after) == len(before) - 1 and applied.dropped["train"] == 1
    assert after.label_names(0, src.classes) == ["blue", "red"]
    assert (after.targets[1:] == before[2:]).all()  # every other image's targets as they were
    assert after.labels[0] == int(np.argmin(np.where(after.targets[0] > 0, before.sum(0), 1 << 30)))
    r = check_data(str(root / multilabel_csv.name), fixes=str(tmp_path / "fixes.csv"))
    assert r.summary["fixes"]["dropped"] == 1 and r.summary["fixes"]["relabelled"] == 1


@pytest.mark.parametrize("multilabel", [True, False])
def test_a_label_set_relabel_is_refused_where_it_cannot_apply(tmp_path, multilabel_csv, tiny_data, multilabel):
    """A set with a label the data lacks (multi-label), or any set for single-label data: one line, nothing done."""
    src = open_source(str(multilabel_csv if multilabel else tiny_data), carve=False)
    to = "red|purple" if multilabel else "|".join(src.classes[:2])
    n = len(src.splits["train"])
    (tmp_path / "fixes.csv").write_text(f"path,action,to\n{src.splits['train'].paths[0]},relabel,{to}\n")
    says = "'purple' is not a class of the data" if multilabel else "gives several labels, but the data has one"
    with pytest.raises(UsageError, match=says):
        apply_fixes(src, read_fixes(str(tmp_path / "fixes.csv")))
    assert len(src.splits["train"]) == n and src.fixes is None
