"""check --deep on a multi-label manifest: label sets judged by cleanlab's multi-label confident learning on
one-vs-rest cross-validated probabilities (studies/audit/labels_multilabel.py), fixes.csv rows for them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.studies.audit.deep import deep_check
from imgclf.studies.audit.labels_multilabel import check_multilabel_folds, multilabel_label_findings

pytestmark = pytest.mark.usefixtures("in_tmp")


def _sets(n: int, wrong: int, seed: int = 0):
    """Features that hold each of labels a, b, c in its own block of dimensions (a label present: +4 there),
    every label set drawn at random; the first `wrong` images labelled with label a flipped."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 3)) < 0.5
    x = rng.normal(0, 1, (n, 24)) + np.repeat(np.where(y, 4.0, -4.0), 8, axis=1)
    cells = ["|".join(c for c, h in zip("abc", row) if h) for row in y]
    given = ["|".join(c for c, h in zip("abc", (not row[0], *row[1:])) if h) for row in y[:wrong]] + cells[wrong:]
    return x.astype(np.float32), given, cells, [f"img{i}.png" for i in range(n)]


def test_planted_wrong_label_sets_are_found_with_the_right_set_suggested():
    x, given, truth, shown = _sets(90, wrong=5)
    assert "" in given[:5] or "" in truth[:5]  # an image with no label among the planted ones
    found, summary = multilabel_label_findings(x, given, shown, ["a", "b", "c"], folds=3, seed=0, source="test")
    assert {f.paths[0] for f in found} == {f"img{i}.png" for i in range(5)}
    assert all(f.suggested == truth[int(f.paths[0][3:-4])] for f in found)
    assert [f.score for f in found] == sorted(f.score for f in found) and summary["cv_mAP"] > 0.9
    for f in found:  # an empty set is said, not left blank
        assert ("(no label)" in f.detail) == (not f.label or not f.suggested), f.detail
    clean, _ = multilabel_label_findings(x, truth, shown, ["a", "b", "c"], folds=3, seed=0, source="test")
    assert clean == []


def test_a_label_on_too_few_or_too_many_images_for_the_folds_is_refused():
    with pytest.raises(UsageError, match=r"label 'a' has 2 images without it, fewer than --folds 3: pass --folds 2"):
        check_multilabel_folds(["a|b", "a|b", "a", "a", "", ""], ["a", "b"], 3)
    with pytest.raises(UsageError, match=r"label 'a' has 1 image without it, .*: add images without it"):
        check_multilabel_folds(["a", "a", "a|b", "a|b", "b"], ["a", "b"], 3)
    check_multilabel_folds(["a|b", "a|b", "a", "a", "", ""], ["a", "b"], 2)  # enough


def test_deep_check_of_a_multilabel_manifest_with_a_checkpoint_as_the_feature_model(
    multilabel_csv, multilabel_ckpt, tmp_path
):
    res = deep_check(
        str(multilabel_csv), model=multilabel_ckpt, folds=2, out=str(tmp_path / "chk"), fixes=str(tmp_path / "f.csv")
    )
    lab = res.report.summary["deep"]["labels"]
    assert lab["task"] == "multilabel" and lab["images"] == 42 and 0 <= lab["cv_mAP"] <= 1
    assert "cross-validated mAP" in res.format_text()
    with open(tmp_path / "f.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "label"]
    assert len(rows) == lab["issues"]
    assert all(r["action"] == ("relabel" if r["to"] else "keep") for r in rows)
