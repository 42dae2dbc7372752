"""A multi-label model's evaluation: per-label ECE, errors by true label, evaluate's eval.json and report.html (an
evaluation folder and a run folder), calibrate with a temperature per label, robustness and explain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import label_set
from imgclf.evaluation.calibration import calibrate
from imgclf.evaluation.command import evaluate
from imgclf.evaluation.explain import explain
from imgclf.evaluation.label_calibration import binary_ece, carry_thresholds
from imgclf.evaluation.multilabel import multilabel_metrics
from imgclf.evaluation.multilabel_eval import format_multilabel_report, label_errors
from imgclf.evaluation.report import build_report
from imgclf.evaluation.robustness import format_table, robustness
from imgclf.infer.logits import split_logits
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint


def test_binary_ece_and_errors_by_true_label_count_what_they_say():
    assert binary_ece(np.full(10, 0.8), np.array([1] * 8 + [0] * 2)) == pytest.approx(0.0)
    assert binary_ece(np.full(10, 0.9), np.array([1] * 5 + [0] * 5)) == pytest.approx(0.4)
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]])
    s = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.1, 0.9], [0.1, 0.2, 0.1]])
    e = label_errors(s, y, [0.5, 0.5, 0.5], ["a", "b", "c"])
    assert e["missed"] == [2, 2, 0] and e["false_positives"] == [0, 1, 1]
    # row a: a missed twice; b predicted wrongly once beside a true a (image 1), c once (image 0)
    assert e["errors_by_truth"] == [[2, 1, 1], [0, 2, 1], [0, 0, 0]]
    assert e["missed_together"][0][1] == 1  # image 3 misses both a and b


def test_evaluate_writes_the_multilabel_measures_and_report(multilabel_ckpt, tmp_path):
    m = evaluate(multilabel_ckpt, out=str(tmp_path / "ev"), workers=0, device="cpu")
    runner = open_model(multilabel_ckpt, device="cpu")
    logits, y, *_ = split_logits(runner, None, "val", workers=0)
    assert y.shape == (10, 3) and y.dtype == torch.float32  # multi-hot, the model's label order
    p = logits.sigmoid().numpy()
    want = multilabel_metrics(p, y.numpy(), [0.5, 0.4, 0.6], runner.classes)
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["task"] == "multilabel" and saved["thresholds"] == [0.5, 0.4, 0.6]
    assert saved["mAP"] == pytest.approx(want["mAP"]) and saved["micro_f1"] == pytest.approx(want["micro_f1"])
    assert saved["at_0.5"]["micro_f1"] == pytest.approx(
        multilabel_metrics(p, y.numpy(), [0.5] * 3, ["a"] * 3)["micro_f1"]
    )
    assert set(saved["calibration"]["ece_per_label"]) == set(runner.classes)
    support = [r["support"] for r in saved["per_label"].values()]
    assert [support[k] - saved["errors"]["missed"][k] for k in range(3)] == [
        int(((p[:, k] >= t) & (y[:, k].numpy() > 0)).sum()) for k, t in enumerate([0.5, 0.4, 0.6])
    ]
    text = format_multilabel_report(m)
    assert "mAP" in text and all(c in text for c in runner.classes)
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Per label" in page and "Errors by true label" in page and "Confusion matrix" not in page
    assert "could not be built" not in page and page.count("<img") >= 2  # the figures drawn, not left out
    assert (tmp_path / "ev" / "label_errors.png").is_file() and (tmp_path / "ev" / "reliability.png").is_file()

    run = tmp_path / "run"  # a training run's folder: its best checkpoint measured on validation for the page
    run.mkdir()
    shutil.copy(multilabel_ckpt, run / "best.pt")
    (run / "results.json").write_text(json.dumps({"task": "multilabel", "mAP": saved["mAP"]}))
    build_report(str(run))
    page = (run / "report.html").read_text()
    assert "Per label" in page and f"mAP {saved['mAP']:.4f}" in page
    assert "could not be built" not in page  # the figures drawn for the page itself


def test_calibrate_fits_a_temperature_per_label_and_keeps_the_label_sets(multilabel_ckpt, tmp_path):
    path = str(tmp_path / "m.pt")
    shutil.copy(multilabel_ckpt, path)
    before = open_model(path, device="cpu")
    logits, _, *_ = split_logits(before, None, "val", workers=0)
    sets = [label_set(r, before.thresholds, before.classes) for r in logits.sigmoid().tolist()]
    r = calibrate(path, device="cpu", workers=0)
    ck = load_checkpoint(path)
    assert isinstance(ck["temperature"], list) and len(ck["temperature"]) == 3 and min(ck["temperature"]) > 0
    assert r.bce_after <= r.bce_before + 1e-9 and r.threshold_goal is None
    after = open_model(path, device="cpu")
    z, _, *_ = split_logits(after, None, "val", workers=0)
    assert [label_set(s, after.thresholds, after.classes) for s in z.sigmoid().tolist()] == sets
    assert calibrate(path, device="cpu", workers=0, threshold="f1").threshold_goal == "f1"
    with pytest.raises(UsageError, match="is not a goal"):
        calibrate(path, threshold="f2")


def test_carried_thresholds_take_the_same_decisions():
    z = np.linspace(-6, 6, 101)
    t0, T0, T1 = np.array([0.3]), 1.5, 0.4
    (t1,) = carry_thresholds(t0, [T0], [T1])
    assert ((1 / (1 + np.exp(-z / T0))) >= t0).tolist() == ((1 / (1 + np.exp(-z / T1))) >= t1).tolist()


def test_robustness_reports_map_and_refuses_attacks(multilabel_ckpt, tmp_path):
    with pytest.raises(UsageError, match="multi-label model has none"):
        robustness(multilabel_ckpt, attacks="fgsm", device="cpu", workers=0, out=str(tmp_path / "a"))
    r = robustness(multilabel_ckpt, corruptions=True, severities=(1,), device="cpu", workers=0, out=str(tmp_path / "r"))
    assert r["task"] == "multilabel" and 0 <= r["clean_mAP"] <= 1
    assert set(r["corruptions"]["results"]["brightness"]) >= {"mAP", "micro_f1", "mean_mAP"}
    assert "clean mAP" in format_table(r)


def test_explain_targets_any_label_of_a_multilabel_model(multilabel_ckpt, multilabel_csv, tmp_path):
    img = sorted((multilabel_csv.parent / "img").glob("val_*.png"))[0]
    rows = explain(multilabel_ckpt, [str(img)], target="green", out=str(tmp_path / "x"), device="cpu")["rows"]
    assert rows[0]["target"] == "green" and isinstance(rows[0]["labels"], list)
    (own,) = explain(multilabel_ckpt, [str(img)], out=str(tmp_path / "y"), device="cpu")["rows"]
    assert own["target"] == own["label"]  # the default: the top-scoring label


def test_the_multilabel_sections_escape_label_names(tmp_path):
    from PIL import Image

    from imgclf.evaluation.multilabel_eval import multilabel_evaluation
    from imgclf.evaluation.report_folder import Folder
    from imgclf.evaluation.report_multilabel import SECTIONS

    names = ["<b>x</b>", "y&z"]
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    m = multilabel_evaluation(np.array([[0.9, 0.6], [0.2, 0.7], [0.4, 0.8], [0.1, 0.3]]), y, [0.5, 0.5], names)
    for png in ("reliability.png", "label_errors.png"):  # evaluate's figures, not drawn again here
        Image.new("RGB", (2, 2)).save(tmp_path / png)
    f = Folder(str(tmp_path), "evaluation", eval=m)
    page = "".join(SECTIONS[k][1](f) for k in ("confusion", "per-class", "reliability"))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "y&amp;z" in page
