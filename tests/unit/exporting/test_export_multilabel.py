"""Exports of a multi-label checkpoint: verified per label at the stored thresholds, mAP/micro-F1 instead of
accuracy, the per-label temperature in the graph, bench on the export (the `multilabel_ckpt` fixture)."""

from __future__ import annotations

import json

import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import DataError
from imgclf.core.multilabel import MULTILABEL
from imgclf.exporting.export import export, format_export_report
from imgclf.exporting.verify import accuracy_on, compare
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models import tta
from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.kernels

pytest.importorskip("onnxruntime")

SMALL = dict(calib_images=16, verify_images=10)


@pytest.fixture(scope="module")
def ml_exports(multilabel_ckpt, multilabel_csv, tmp_path_factory) -> dict:
    """onnx and dynamic-int8 exports of the multi-label checkpoint, each with mAP on the manifest's test split."""
    out = tmp_path_factory.mktemp("ml_exports")
    return {
        f: export(multilabel_ckpt, f, out=str(out / f"m.{f}"), data=str(multilabel_csv), split="test", **SMALL)
        for f in ("onnx", "dynamic-int8")
    }


@pytest.mark.parametrize("fmt", ["onnx", "dynamic-int8"])
def test_multilabel_export_is_verified_per_label(ml_exports, fmt):
    r = ml_exports[fmt]
    v = r["verification"]
    assert v["ok"] and "top1_agreement" not in v
    assert v["label_decisions"] == 3 * v["images"] and len(v["per_label_agreement"]) == 3
    assert v["labels_kept"] <= v["label_decisions"] and v["sets_kept"] <= v["images"]
    assert 0 <= v["max_prob_diff"] < (1e-4 if fmt == "onnx" else 0.1)
    assert ("min_label_agreement" in v["tolerance"]) == (fmt == "dynamic-int8")
    a = r["accuracy"]
    assert a["metric"] == "mAP" and set(a[fmt]) == {"mAP", "micro_f1"} and a["images"] == 8
    assert abs(a["mAP_drop_points"]) < (1e-3 if fmt == "onnx" else 5.0)
    meta = open_model(r["out"]).metadata()
    assert meta["task"] == MULTILABEL and meta["thresholds"] == [0.5, 0.4, 0.6]
    assert json.load(open(r["out"] + ".json"))["verification"]["label_agreement"] == v["label_agreement"]
    text = format_export_report(r)
    assert "label decisions at the stored thresholds kept" in text and "mAP: checkpoint" in text


def test_label_decisions_decide_the_int8_verdict():
    """Decisions at the thresholds are what is compared: a shift that moves probabilities across a threshold
    counts, one that does not is kept; a file losing 10% of the decisions is refused, one losing none passes."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 5, generator=g) * 3
    thr = [0.5, 0.3, 0.5, 0.7, 0.5]
    near = compare(ref, ref + 0.01 * torch.randn(200, 5, generator=g), int8=True, thresholds=thr)
    assert near["ok"] and near["label_agreement"] > 0.99 and near["max_prob_diff"] < 0.01
    flipped = ref.clone()
    flipped[:100, 0] = -ref[:100, 0]  # label 0 decided the other way on half the images: 10% of the decisions
    bad = compare(ref, flipped, int8=True, thresholds=thr)
    assert not bad["ok"] and "per-label agreement" in bad["reason"] and bad["per_label_agreement"][0] < 0.55
    assert compare(ref, flipped, int8=False, thresholds=thr)["label_agreement"] == bad["label_agreement"]


def test_bench_runs_on_a_multilabel_export(ml_exports, multilabel_csv, capsys):
    argv = [
        "bench",
        ml_exports["onnx"]["out"],
        "--batch-sizes",
        "2",
        "--iters",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--eager",
        "",
        "--data",
        str(multilabel_csv),
    ]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in rows] == ["onnx"] and rows[0]["mAP"] is not None and rows[0]["accuracy"] is None
    assert main(argv) == 0
    assert "mAP" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.skipif(
    not hasattr(tta, "as_temperature"), reason="needs the per-label temperature of models/tta.py (issue 24, H2)"
)
@pytest.mark.parametrize("fmt", ["onnx", "dynamic-int8"])
def test_per_label_temperature_is_in_the_export(multilabel_ckpt, tmp_path, fmt):
    ck = load_checkpoint(multilabel_ckpt)
    ck["temperature"] = [2.0, 0.5, 1.0]
    path = str(tmp_path / "calibrated.pt")
    save_checkpoint(ck, path)
    r = export(path, fmt, out=str(tmp_path / f"t.{fmt}"), **SMALL)
    assert r["temperature"] == [2.0, 0.5, 1.0] and "temperature per label" in format_export_report(r)
    exported = open_model(r["out"])
    x = torch.randn(4, 3, 16, 16)
    bare = CheckpointRunner(multilabel_ckpt, device="cpu", precision="fp32", channels_last=False).logits(x)
    want = bare / torch.tensor([2.0, 0.5, 1.0])
    assert torch.allclose(exported.logits(x), want, atol=1e-4 if fmt == "onnx" else 0.3)
    assert not torch.allclose(exported.logits(x), bare, atol=0.3)


def test_accuracy_of_a_multilabel_model_on_single_label_data_is_one_line(multilabel_ckpt, tiny_data):
    runner = CheckpointRunner(multilabel_ckpt, device="cpu", precision="fp32")
    with pytest.raises(DataError, match="is single-label data but the model is multi-label: pass --data"):
        accuracy_on([runner], str(tiny_data), split="val", config=runner.config)


def test_export_with_data_of_the_other_kind_is_refused_before_any_work(
    multilabel_ckpt, tiny_data, tmp_path, monkeypatch
):
    """`export --data` of single-label data for a multi-label model: one line, before the export is made (none
    is written, not even to a temporary name)."""
    from imgclf.exporting import export as export_module

    monkeypatch.setattr(export_module, "_write_verified", lambda *a, **k: pytest.fail("the export was made"))
    with pytest.raises(DataError, match="is single-label data but the model is multi-label: pass --data"):
        export(multilabel_ckpt, "onnx", out=str(tmp_path / "m.onnx"), data=str(tiny_data), **SMALL)
    assert list(tmp_path.iterdir()) == []
