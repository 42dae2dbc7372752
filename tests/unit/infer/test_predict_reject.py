"""`predict --reject ood` (issue 25): an image unlike the training data answers "unknown" with its score, in the
Predictor, the CLI's lines and every streamed output (CSV, JSON lines, Parquet), for single- and multi-label
models; the rule is core/ood.mark_unknown on the scores of the same forward pass; bad input is one line, exit 2.

The model is the tiny one with an out-of-distribution entry fitted here (conftest.with_ood: its training images'
features as the bank, thresholds on its validation images). Uniform noise is far from every training feature."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import noise_images, usage_error, with_ood, without_ood

from imgclf.cli.main import main
from imgclf.core import ood
from imgclf.core.errors import UsageError
from imgclf.infer.predict import Predictor, expand_paths
from imgclf.infer.stream import predict_files


@pytest.fixture(scope="module")
def ood_best(tiny_best, tiny_data, tmp_path_factory) -> str:
    """tiny_best with a kNN bank of its training images and thresholds fitted on its validation images."""
    out = tmp_path_factory.mktemp("ood_best") / "best.pt"
    return with_ood(tiny_best, expand_paths([tiny_data / "train"]), expand_paths([tiny_data / "val"]), out)


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> list[str]:
    """Three images of uniform noise: nothing like the three flat colours the model was trained on."""
    return noise_images(tmp_path_factory.mktemp("noise"), 3, seed=0)


@pytest.fixture(scope="module")
def known(tiny_data) -> list[str]:
    return expand_paths([tiny_data / "test"])


def test_noise_is_unknown_and_test_images_are_kept(ood_best, noise, known):
    p = Predictor(ood_best, device="cpu", reject="ood")
    assert p.ood_score == "knn"  # the default where the model has a bank
    rows = p.predict(noise + known, top_k=2)
    threshold = p.runner.ood["thresholds"]["knn"]
    for r in rows:
        assert r["ood"]["score"] == "knn" and r["ood"]["threshold"] == threshold
        assert r["unknown"] == (r["ood"]["value"] > threshold)
        assert (r["label"] is None) == r["unknown"]
        assert len(r["top_k"]) == 2 and r["probability"] == r["top_k"][0]["probability"]  # still shown
    assert [r["unknown"] for r in rows[:3]] == [True] * 3
    assert sum(r["unknown"] for r in rows[3:]) == 0, [r["ood"] for r in rows[3:]]
    # the labels of the kept images are those predicted without rejection
    plain = Predictor(ood_best, device="cpu").predict(known, top_k=2)
    assert [r["label"] for r in rows[3:]] == [r["label"] for r in plain]
    assert "unknown" not in plain[0] and "ood" not in plain[0]


@pytest.mark.parametrize("score", ["energy", "msp"])
def test_each_score_is_core_oods_on_the_same_logits(ood_best, noise, known, score):
    """msp and energy are core/ood's scores of the model's own logits, and the rule is `value > threshold`."""
    p = Predictor(ood_best, device="cpu", reject="ood", ood_score=score)
    rows = p.predict(noise + known)
    x = torch.stack([p.transform(p.load_uint8(f)) for f in noise + known])
    want = ood.scores({"logits": p.runner.logits(x).numpy()}, p.task)[score]
    np.testing.assert_allclose([r["ood"]["value"] for r in rows], want, rtol=1e-5, atol=1e-6)
    threshold = p.runner.ood["thresholds"][score]
    assert [r["unknown"] for r in rows] == [bool(v > threshold) for v in (r["ood"]["value"] for r in rows)]


def test_with_min_confidence_both_apply(ood_best, noise, known):
    """Each rule adds its own field; the label is null when either says so."""
    rows = Predictor(ood_best, device="cpu", reject="ood", min_confidence=1.0).predict(noise + known)
    assert all(r["unsure"] for r in rows)  # nothing is certain
    assert all(r["label"] is None for r in rows)
    assert [r["unknown"] for r in rows] == [True] * 3 + [False] * len(known)


def test_multilabel_unknown_empties_the_label_set(multilabel_ckpt, multilabel_csv, tmp_path):
    """Thresholds fitted for half of the validation images (accept 0.5): the other half is unknown, with an empty
    label set and every score still given; the kept half has the labels of a prediction without rejection."""
    imgs = sorted((multilabel_csv.parent / "img").glob("*.png"))
    train = [p for p in imgs if p.name.startswith("train_")]
    val = [str(p) for p in imgs if p.name.startswith("val_")]
    ml = with_ood(multilabel_ckpt, train, val, tmp_path / "ml.pt", accept=0.5)
    plain = Predictor(ml, device="cpu").predict(val)
    for score in ood.SCORES:
        rows = Predictor(ml, device="cpu", reject="ood", ood_score=score).predict(val)
        assert 0 < sum(r["unknown"] for r in rows) < len(rows), score
        for r, q in zip(rows, plain):
            assert set(r) == {"path", "labels", "scores", "unknown", "ood"}
            assert r["labels"] == ([] if r["unknown"] else q["labels"]) and r["scores"] == q["scores"]


def test_cli_lines_and_streamed_outputs(ood_best, noise, known, tmp_path, capsys):
    assert main(["predict", ood_best, *noise[:1], known[0], "--reject", "ood", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[1].startswith("unknown (") and " > " in lines[0].split("\t")[-1]
    assert lines[1].split("\t")[-1].startswith("knn ") and " <= " in lines[1]
    files = noise[:2] + known[:2]
    want = Predictor(ood_best, device="cpu", reject="ood", ood_score="energy").predict(files)
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"p.{suffix}"
        argv = ["predict", ood_best, *files, "--reject", "ood", "--ood-score", "energy", "--output", str(out), "-q"]
        assert main(argv) == 0
        capsys.readouterr()
        if suffix == "csv":
            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0])[-4:] == ["unknown", "ood_score", "ood_value", "ood_threshold"]
            got = [(r["unknown"] == "true", r["label"] or None, r["ood_score"], float(r["ood_value"])) for r in rows]
        elif suffix == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            got = [(r["unknown"], r["label"], r["ood"]["score"], r["ood"]["value"]) for r in rows]
        else:
            rows = pq.read_table(out).to_pylist()
            got = [(r["unknown"], r["label"], r["ood_score"], r["ood_value"]) for r in rows]
        assert [g[:3] for g in got] == [(w["unknown"], w["label"], "energy") for w in want], suffix
        np.testing.assert_allclose([g[3] for g in got], [w["ood"]["value"] for w in want], rtol=1e-5)


def test_streamed_rows_without_reject_keep_their_columns(ood_best, known, tmp_path):
    out = tmp_path / "plain.csv"
    predict_files(ood_best, known[:2], str(out), device="cpu")
    with open(out, newline="") as f:
        assert next(csv.reader(f))[-1] == "unsure"  # the columns of a run without --reject, unchanged


def test_bad_input_is_one_line(ood_best, tiny_best, known, capsys, tmp_path):
    assert "needs --reject ood" in usage_error(capsys, ["predict", ood_best, known[0], "--ood-score", "knn"])
    old = without_ood(tiny_best, tmp_path / "old.pt")
    out = tmp_path / "out"
    out.mkdir()
    line = usage_error(capsys, ["predict", old, known[0], "--reject", "ood", "--output", str(out / "o.csv")])
    assert "no out-of-distribution thresholds" in line and "imgclf calibrate" in line
    assert not list(out.iterdir())  # refused before any file was made
    assert "invalid choice" in usage_error(capsys, ["predict", ood_best, known[0], "--reject", "maybe"])
    assert "invalid choice" in usage_error(
        capsys, ["predict", ood_best, known[0], "--reject", "ood", "--ood-score", "x"]
    )
    with pytest.raises(UsageError, match="choose one of msp, energy, knn"):
        Predictor(ood_best, device="cpu", reject="ood", ood_score="mahalanobis")
    with pytest.raises(UsageError, match="the only rejection is 'ood'"):
        predict_files(ood_best, known[:1], device="cpu", reject="yes")


def test_resume_with_another_rejection_is_refused(ood_best, known, tmp_path):
    """A stopped run's rows are not mixed with rows of another --reject / --ood-score; the same call finishes it."""
    out = tmp_path / "p.csv"
    seen = []

    def stop_after_three(row):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    run = dict(device="cpu", batch_size=2, reject="ood")
    with pytest.raises(KeyboardInterrupt):
        predict_files(ood_best, known, str(out), on_row=stop_after_three, **run)
    for change, words in (({"reject": None}, "--reject ood, this one None"), ({"ood_score": "msp"}, "--ood-score")):
        with pytest.raises(UsageError, match=words):
            predict_files(ood_best, known, str(out), resume=True, **{**run, **change})
    assert predict_files(ood_best, known, str(out), resume=True, **run)["resumed"] == 2
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == known and {r["unknown"] for r in rows} == {"false"}
