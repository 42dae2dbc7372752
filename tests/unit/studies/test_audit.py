"""check --deep (studies/audit/): label issues by cross-validation and cleanlab, the cached features, the output
folder and fixes.csv, a checkpoint as the feature model."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_image_folder, smooth_field, train_tiny
from PIL import Image

from imgclf.core.errors import UsageError
from imgclf.data.check import check_data
from imgclf.data.fixes import COLUMNS
from imgclf.studies.audit import features
from imgclf.studies.audit.deep import deep_check, fix_rows
from imgclf.studies.audit.labels import LIKELY, CrossVal, check_folds, label_findings, noise_posterior

pytestmark = pytest.mark.usefixtures("in_tmp")


def _blobs(n_per_class: int, flips: int, seed: int = 0):
    """Two well-separated Gaussian classes in 32 dimensions; the first `flips` of class a labelled b."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (n_per_class, 32)) + 4, rng.normal(0, 1, (n_per_class, 32)) - 4])
    labels = ["a"] * n_per_class + ["b"] * n_per_class
    for i in range(flips):
        labels[i] = "b"
    return x.astype(np.float32), labels, [f"img{i}.png" for i in range(len(labels))]


def test_planted_wrong_labels_are_found_ranked_with_the_suggestion():
    x, labels, shown = _blobs(40, flips=4)
    found, summary = label_findings(x, labels, shown, ["a", "b"], folds=5, seed=0, source="test features")
    assert {f.paths[0] for f in found} == {f"img{i}.png" for i in range(4)}
    assert all(f.kind == "label" and f.label == "b" and f.suggested == "a" for f in found)
    assert [f.score for f in found] == sorted(f.score for f in found)  # worst first
    assert summary["issues"] == 4 and summary["images"] == 80
    # the logistic regression gives the flips 5-10% for their label and the others 85-99%: as sure of a wrong
    # label as of a right one, so nothing is likely wrong (the estimated noise collapses to 0): all to review
    assert summary["likely_wrong"] == 0 and summary["noise_rate"] < 1e-6
    assert all(f.wrong is not None and f.wrong < LIKELY for f in found)


def test_noise_posterior_is_zero_without_noise_and_finds_the_sure_flips():
    """Symmetric noise by EM: confident, right probabilities need no noise (rate 0, nothing likely wrong); a
    label the classifier gives 0.1% where the rest get 90% is likely wrong, one it gives 40% is not."""
    y = np.zeros(100, dtype=np.int64)
    probs = np.tile([0.9, 0.05, 0.05], (100, 1))
    wrong, eps = noise_posterior(y, probs)
    assert eps < 1e-6 and not (wrong >= LIKELY).any()
    probs[:10] = [0.001, 0.998, 0.001]
    probs[10:20] = [0.4, 0.3, 0.3]
    wrong, eps = noise_posterior(y, probs)
    assert (wrong[:10] >= LIKELY).all() and (wrong[10:] < LIKELY).all()
    assert 0.09 <= eps <= 0.15


def test_the_refit_leaves_the_excluded_images_out_of_training_not_out_of_the_answer():
    x, labels, _ = _blobs(30, flips=3)
    y = np.asarray([labels_i == "b" for labels_i in labels], dtype=np.int64)
    cv = CrossVal(x, y, folds=3, seed=0)
    first = cv.probs()
    exclude = np.zeros(len(y), dtype=bool)
    exclude[:3] = True
    again = cv.probs(exclude=exclude)
    assert again.shape == first.shape and np.allclose(again.sum(1), 1)
    # without the flips to learn from, the fold models are surer that those images are class a
    assert (again[:3, 0] >= first[:3, 0] - 1e-9).all()


def test_a_clean_set_has_no_label_issues():
    x, labels, shown = _blobs(40, flips=0, seed=1)
    found, _ = label_findings(x, labels, shown, ["a", "b"], folds=5, seed=0, source="test features")
    assert found == []


def test_a_class_smaller_than_the_folds_is_refused_with_what_to_pass():
    with pytest.raises(UsageError, match=r"class 'b' has 3 images, fewer than --folds 5: pass --folds 3"):
        check_folds({"a": 20, "b": 3}, 5)
    with pytest.raises(UsageError, match="at least two classes"):
        check_folds({"a": 20}, 5)
    check_folds({"a": 5, "b": 5}, 5)  # enough


def _planted(tmp_path, flips=("red/000.png", "red/001.jpg")):
    """Two colours, 12 images each, 32 px; `flips` moved from red to blue (wrong labels)."""
    d = make_image_folder(tmp_path / "colours", layout="flat", classes=("red", "blue"), n=12, size=32)
    for f in flips:
        shutil.move(d / f, d / "blue" / ("flip-" + f.split("/")[1]))
    return d


def test_deep_check_with_lite0_finds_the_flips_writes_the_folder_and_fixes_and_caches(tmp_path, caplog):
    d = _planted(tmp_path)
    res = deep_check(str(d), folds=3, out=str(tmp_path / "chk"), fixes=str(tmp_path / "fixes.csv"), device="cpu")
    suspects = [f for f in res.report.warnings if f.kind == "label"]
    assert {f.paths[0] for f in suspects} >= {"blue/flip-000.png", "blue/flip-001.jpg"}
    assert len(suspects) <= 4 and all(f.suggested == "red" for f in suspects[:2])
    saved = json.loads((tmp_path / "chk" / "check.json").read_text())
    assert saved["summary"]["deep"]["cache"] == "features computed and cached"
    assert {f["paths"][0] for f in saved["warnings"] if f["kind"] == "label"} >= {"blue/flip-000.png"}
    with open(tmp_path / "fixes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    flip = next(r for r in rows if r["path"] == "blue/flip-000.png")
    # 12 images a class: the classifier is not sure enough (P(label wrong) under 0.5) to suggest the relabel itself
    assert (flip["kind"], flip["action"], flip["label"], flip["to"]) == ("label", "keep", "blue", "red")
    assert "review it" in flip["detail"]
    assert "deep check with efficientnet_lite0" in res.format_text() and "fixes.csv" in res.format_text()
    # the second run reads the features back (same model, preprocessing and files; labels may differ)
    again = deep_check(str(d), folds=3, out=str(tmp_path / "chk"), device="cpu")
    assert again.report.summary["deep"]["cache"] == "features from the cache"
    assert [f.paths for f in again.report.warnings] == [f.paths for f in res.report.warnings]


def test_features_are_keyed_by_files_not_labels(tmp_path):
    from imgclf.data.sources import Split

    fm = features.FeatureModel(
        None, "m", features.Preprocess(img_size=8, resize=8, mean=[0.5] * 3, std=[0.5] * 3), "m", "m\0x", "cpu"
    )
    p = tmp_path / "a.png"
    p.write_bytes(b"x")
    k = features.feature_key(fm, Split("s", [0], paths=[str(p)]))
    assert k == features.feature_key(fm, Split("s", [1], paths=[str(p)]))
    p.write_bytes(b"xy")  # another size: another key
    assert k != features.feature_key(fm, Split("s", [0], paths=[str(p)]))


def test_an_existing_folder_that_is_not_a_check_is_refused_before_any_work(tmp_path):
    d = _planted(tmp_path)
    other = tmp_path / "runs"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds other files and no check.json"):
        deep_check(str(d), out=str(other))
    with pytest.raises(UsageError, match="no pretrained weights"):
        deep_check(str(d), model="test_tiny")
    assert (other / "keep.txt").read_text() == "mine" and not (tmp_path / "checks").exists()


def test_a_class_with_fewer_images_than_folds_is_refused_before_features(tmp_path):
    d = make_image_folder(tmp_path / "few", layout="flat", classes=("a", "b"), n=3, size=16)
    with pytest.raises(UsageError, match="fewer than --folds 5: pass --folds 3"):
        deep_check(str(d), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_as_model_uses_its_backbone_and_says_so(tmp_path):
    d = make_image_folder(tmp_path / "tiny", classes=("cat", "dog"), n=10, n_val=4, size=16)
    res = train_tiny(tmp_path, str(d), "t", epochs=1)
    best = str(tmp_path / "runs" / "t" / "best.pt")
    out = deep_check(str(d), model=best, folds=3, out=str(tmp_path / "o"), device="cpu")
    deep = out.report.summary["deep"]
    assert deep["model"] == f"checkpoint {best}" and "its head refit" in deep["labels"]["classifier"]
    assert deep["images"] == 28 and res["run_dir"]


def test_fix_rows_keep_the_train_copy_and_drop_the_others():
    from imgclf.data.check import CheckReport, Finding

    rep = CheckReport("d")
    rep.errors.append(Finding("near-duplicate-across-splits", ["val/a/1.png", "train/a/9.png"], "c", group="nd-1"))
    rep.warnings.append(Finding("near-duplicate", ["train/a/2.png", "train/a/3.png"], "copy", group="nd-2"))
    rep.warnings.append(Finding("outlier", ["train/b/5.png"], "far", score=0.9))
    split_of = {"val/a/1.png": "val", "train/a/9.png": "train", "train/a/2.png": "train", "train/a/3.png": "train"}
    rows = fix_rows(rep, split_of)
    assert {r.kind for r in rows} == {"near-duplicate", "outlier"}  # fixes.csv's kinds
    got = {(r.path, r.action, r.group) for r in rows}
    assert got == {
        ("val/a/1.png", "drop", "nd-1"),
        ("train/a/9.png", "keep", "nd-1"),
        ("train/a/2.png", "keep", "nd-2"),
        ("train/a/3.png", "drop", "nd-2"),
        ("train/b/5.png", "keep", ""),
    }


def test_fix_rows_give_each_image_one_action_so_apply_fixes_reads_them_back(tmp_path):
    """An image that is both a label suspect and the dropped copy of a near-duplicate: its label row turns to
    keep (the drop wins), so the deep check's own fixes.csv is never refused by --apply-fixes (it was: 'drop, but
    line N says relabel')."""
    from imgclf.data.check import CheckReport, Finding
    from imgclf.data.fixes import read_fixes, write_fixes

    rep = CheckReport("d")
    rep.errors.append(Finding("near-duplicate-across-splits", ["val/a/1.png", "train/a/9.png"], "c", group="nd-1"))
    rep.warnings.append(Finding("label", ["val/a/1.png"], "looks b", label="a", suggested="b", score=0.01, wrong=0.9))
    rep.warnings.append(Finding("label", ["train/a/9.png"], "looks b", label="a", suggested="b", score=0.02, wrong=0.8))
    rep.warnings.append(Finding("label", ["train/b/2.png"], "looks a", label="b", suggested="a", score=0.2, wrong=0.3))
    rows = fix_rows(rep, {"val/a/1.png": "val", "train/a/9.png": "train"})
    got = {(r.path, r.kind, r.action) for r in rows}
    assert ("val/a/1.png", "label", "keep") in got and ("val/a/1.png", "near-duplicate", "drop") in got
    assert ("train/a/9.png", "label", "relabel") in got  # the copy that stays may still be relabelled
    assert ("train/b/2.png", "label", "keep") in got  # more likely right than wrong: to review, not to apply
    write_fixes(rows, str(tmp_path / "fixes.csv"))
    assert len(read_fixes(str(tmp_path / "fixes.csv"), ["a", "b"]).rows) == len(rows)


def test_the_plain_check_is_unchanged_by_the_deep_module(tmp_path):
    d = _planted(tmp_path)
    assert all(f.kind != "label" for f in check_data(str(d)).warnings)


def test_a_copy_in_val_is_a_leak_in_the_report_its_sheet_and_fixes(tmp_path):
    """The whole deep path on train/ and val/: a JPEG-40 copy of a training photo placed in val is clustered
    across splits (an error, exit 1), fixes.csv keeps the train copy and drops the val one, report.html shows the
    finding with thumbnails, and a contact sheet per kind is written."""
    d = tmp_path / "d"
    for split, seeds in (("train", range(0, 12)), ("val", range(100, 106))):
        for ci, cls in enumerate(("red", "green")):
            (d / split / cls).mkdir(parents=True)
            for s in seeds:
                smooth_field(s + 1000 * ci, 64, scales=((4, 1.0), (8, 0.5)), tint=ci).save(d / split / cls / f"{s}.png")
    (d / "train" / "red" / "3.png").rename(d / "train" / "red" / "orig.png")
    src = Image.open(d / "train" / "red" / "orig.png")
    src.save(d / "val" / "red" / "copy.jpg", quality=40)
    res = deep_check(str(d), folds=3, out=str(tmp_path / "chk"), fixes=str(tmp_path / "fixes.csv"), device="cpu")
    leaks = [f for f in res.report.errors if f.kind == "near-duplicate-across-splits"]
    assert [sorted(f.paths) for f in leaks] == [["train/red/orig.png", "val/red/copy.jpg"]]
    assert not res.report.ok and leaks[0].group
    with open(tmp_path / "fixes.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f) if r["kind"] == "near-duplicate"}
    assert (rows["train/red/orig.png"]["action"], rows["val/red/copy.jpg"]["action"]) == ("keep", "drop")
    html = (tmp_path / "chk" / "report.html").read_text(encoding="utf-8")
    assert "near-duplicate-across-splits" in html and "val/red/copy.jpg" in html and "data:image/" in html
    assert (tmp_path / "chk" / "sheet-near-duplicate-across-splits.png").is_file()
    assert "report: " in res.format_text()
