"""Multi-label CSV manifests: both forms, the task inferred or insisted on, the refusals (data/multilabel.py)."""

import numpy as np
import pytest
from PIL import Image

from imgclf.core.errors import DataError
from imgclf.core.multilabel import join_labels, split_labels
from imgclf.data.sources import open_source, write_split_manifest


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return tmp_path


def write(folder, name, header, rows):
    p = folder / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return str(p)


def sets(i):
    return [c for c, k in (("cat", 2), ("dog", 3), ("car", 5)) if i % k == 0]


def test_label_cells_give_multi_hot_targets_and_the_task_is_said(images):
    m = write(images, "m.csv", "path,labels,split", [f"{i}.png,{join_labels(sets(i))},train" for i in range(40)])
    src = open_source(m, val_fraction=0.25)
    assert src.task == "multilabel" and src.classes == ["car", "cat", "dog"]
    assert any("inferred from its 'labels' column" in n for n in src.notes)
    both = {**{p: t for p, t in zip(src.splits["train"].paths, src.splits["train"].targets)}}
    both.update(zip(src.splits["val"].paths, src.splits["val"].targets))
    for i in range(40):
        want = [int(c in sets(i)) for c in src.classes]
        assert both[str(images / f"{i}.png")].tolist() == want
    assert sum(len(s) for s in src.splits.values()) == 40


def test_zero_one_columns_and_an_ordinary_column_kept_for_group_by(images):
    rows = [f"{i}.png,{int('cat' in sets(i))},{int('dog' in sets(i))},g{i % 10}" for i in range(40)]
    src = open_source(write(images, "b.csv", "path,cat,dog,shot", rows), group_by="shot")
    assert src.task == "multilabel" and src.classes == ["cat", "dog"]
    assert "column 'shot' holds no 0/1 value: kept as a column (for --group-by), not a label" in src.notes
    tr, va = src.splits["train"], src.splits["val"]
    assert set(tr.columns["shot"]).isdisjoint(va.columns["shot"])


def test_a_zero_one_column_holding_a_two_is_refused_with_its_line(images):
    rows = [f"{i}.png,{i % 2},{2 if i == 5 else 1}" for i in range(40)]
    with pytest.raises(DataError, match=r"line 7: column 'dog' holds '2'"):
        open_source(write(images, "c.csv", "path,cat,dog", rows))


def test_an_empty_cell_is_no_label_for_multilabel_and_refused_for_single(images):
    rows = [f"{i}.png,{'cat' if i % 2 else ''}" for i in range(40)]
    m = write(images, "e.csv", "path,label", rows)
    with pytest.raises(DataError, match="line 2: empty label.*--task multilabel"):
        open_source(m)
    src = open_source(m, task="multilabel")
    assert src.classes == ["cat"] and sum(s.targets.sum() for s in src.splits.values()) == 20


def test_a_label_only_in_val_and_the_wrong_task_are_refused(images):
    rows = [f"{i}.png,{'cat|dog' if i < 39 else 'bird'},{'val' if i > 30 else 'train'}" for i in range(40)]
    with pytest.raises(DataError, match="label 'bird' is on no training image"):
        open_source(write(images, "v.csv", "path,labels,split", rows))
    rows = [f"{i}.png,cat|dog" for i in range(40)]
    with pytest.raises(DataError, match="--task single was given"):
        open_source(write(images, "s.csv", "path,labels", rows), task="single")
    # a `label` column under --task single: a class whose name holds a '|', as before multi-label data existed
    assert open_source(write(images, "t.csv", "path,label", rows), task="single").classes == ["cat|dog"]
    with pytest.raises(DataError, match="--task multilabel needs a multi-label CSV"):
        open_source("digits", task="multilabel")


def test_single_label_manifests_are_as_before(images):
    src = open_source(write(images, "one.csv", "path,label", [f"{i}.png,{'ab'[i % 2]}" for i in range(40)]))
    assert src.task == "single" and src.splits["train"].targets is None
    assert src.splits["train"].target_array().dtype == np.int64


def test_the_split_manifest_writes_label_sets(images, tmp_path):
    m = write(images, "m.csv", "path,labels", [f"{i}.png,{join_labels(sets(i))}" for i in range(40)])
    src = open_source(m)
    out = tmp_path / "split.csv"
    write_split_manifest(src, str(out))
    lines = out.read_text().splitlines()[1:]
    by_path = {ln.split(",")[0]: split_labels(ln.split(",")[1]) for ln in lines}
    assert by_path[str(images / "30.png")] == ["car", "cat", "dog"] and by_path[str(images / "1.png")] == []


def test_the_shared_fixture_manifest_opens_as_multilabel(multilabel_csv):
    src = open_source(str(multilabel_csv))
    assert src.task == "multilabel" and src.classes == ["blue", "green", "red"]
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 24, "val": 10, "test": 8}
