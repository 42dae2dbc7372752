"""imgclf evaluate on the tiny model: eval.json, the plots, the splits, top-5 only above five classes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli.main import main
from imgclf.evaluation.command import evaluate
from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
from imgclf.models.registry import build_model

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder

TINY_CLASSES = ("cat", "dog", "fox")  # conftest.tiny_data


EVAL_KEYS = {"accuracy", "loss", "macro_f1", "top5_accuracy", "num_images", "classes", "per_class", "confusion_matrix"}


def _check_eval(m: dict, classes: list[str]) -> None:
    assert EVAL_KEYS <= set(m)
    assert m["classes"] == classes
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
    assert m["loss"] >= 0 and math.isfinite(m["loss"])
    cm = np.asarray(m["confusion_matrix"])
    n = len(classes)
    assert cm.shape == (n, n)
    assert cm.sum() == m["num_images"]
    assert math.isclose(m["accuracy"], np.trace(cm) / cm.sum(), abs_tol=1e-9)
    assert set(m["per_class"]) == set(classes)
    for i, c in enumerate(classes):
        pc = m["per_class"][c]
        assert set(pc) == {"precision", "recall", "f1", "support"}
        assert pc["support"] == cm[i].sum()  # rows are the true classes
        if cm[i].sum():
            assert math.isclose(pc["recall"], cm[i, i] / cm[i].sum(), abs_tol=1e-9)


@pytest.fixture(scope="module")
def five_class_best(tmp_path_factory, make_folder) -> str:
    from imgclf import train

    data = make_folder(
        tmp_path_factory.mktemp("five") / "colours", classes=("a", "b", "c", "d", "e"), n=6, n_val=3, size=16
    )
    res = train(
        data=str(data), model="test_tiny", epochs=1, out=str(tmp_path_factory.mktemp("runs5")), workers=0, batch_size=8
    )
    return str(Path(res["run_dir"]) / "best.pt")


def test_evaluate_val_writes_report_and_plots(tiny_best, tmp_path):
    out = tmp_path / "eval"
    m = evaluate(tiny_best, split="val", out=str(out), workers=1, device="cpu")
    classes = sorted(TINY_CLASSES)
    _check_eval(m, classes)
    assert m["num_images"] == 18  # 6 per class in val/
    assert m["top5_accuracy"] is None  # fewer than 5 classes
    saved = json.loads((out / "eval.json").read_text())
    _check_eval(saved, classes)
    assert saved["top5_accuracy"] is None
    assert saved["confusion_matrix"] == m["confusion_matrix"]
    for png in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and min(im.size) > 50


def test_evaluate_test_split(tiny_best, tmp_path):
    m = evaluate(tiny_best, split="test", out=str(tmp_path / "e"), workers=1, device="cpu", plots=False)
    _check_eval(m, sorted(TINY_CLASSES))
    assert m["num_images"] == 9


def test_cli_evaluate_with_workers_0(capsys, tiny_best, tmp_path):
    # --workers 0 (load in the main process) is what a user picks on a small machine or when debugging.
    rc = main(["evaluate", tiny_best, "--out", str(tmp_path / "e0"), "--workers", "0", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["num_images"] == 18


def test_evaluate_five_classes_has_no_top5(five_class_best, tmp_path):
    m = evaluate(five_class_best, split="val", out=str(tmp_path / "e5"), workers=1, device="cpu", plots=False)
    _check_eval(m, ["a", "b", "c", "d", "e"])
    assert m["num_images"] == 15
    # with exactly 5 classes the true label is always in the top 5: a 1.0 that says nothing is not reported
    # (test_hostile.test_top5_only_above_five_classes checks the value above 5 classes)
    assert m["top5_accuracy"] is None
    saved = json.loads((tmp_path / "e5" / "eval.json").read_text())
    assert saved["top5_accuracy"] is None


PREPROCESS = {"img_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


CJK = ["猫", "狗"]


def test_evaluate_cjk_classes_one_never_predicted_no_warning(tmp_path, make_folder, recwarn):
    # The whole `evaluate` path, plots included, for a model that never predicts its second class.
    from imgclf.evaluation.command import evaluate

    data = make_folder(tmp_path / "d", classes=tuple(CJK), n=4, n_val=3)
    model = build_model("test_tiny", 2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([1.0, 0.0]))
    ck = make_checkpoint(model, model_name="test_tiny", classes=CJK, preprocess=PREPROCESS, config={"data": str(data)})
    save_checkpoint(ck, str(tmp_path / "one.pt"))
    m = evaluate(
        str(tmp_path / "one.pt"), split="val", out=str(tmp_path / "e"), workers=0, device="cpu", precision="fp32"
    )
    assert m["per_class"][CJK[1]]["precision"] == 0.0
    assert {"eval.json", "confusion_matrix.png", "misclassified.png"} <= set(os.listdir(tmp_path / "e"))
    assert [str(w.message) for w in recwarn] == []
