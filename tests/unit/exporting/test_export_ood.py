"""ONNX exports with the "features" and "knn" outputs, the out-of-distribution record in every format's metadata
(issue 25), and their verification against the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imgclf.core import ood
from imgclf.exporting import writers
from imgclf.exporting.export import export
from imgclf.exporting.outputs import feature_nodes
from imgclf.exporting.verify import check_outputs, ood_decisions
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.kernels

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL = dict(calib_images=8, verify_images=12)


def _val_images(runner: CheckpointRunner, n: int = 12) -> torch.Tensor:
    torch.manual_seed(3)
    s = runner.preprocess.img_size
    return torch.randn(n, 3, s, s)


@pytest.fixture(scope="module")
def bank_ckpt(family_checkpoint, tmp_path_factory) -> str:
    """The random smallcnn checkpoint with an ood entry: a bank of the features of 40 random inputs
    (Runner.features), and thresholds fitted (core/ood.fit_record) at 50% acceptance on 24 others, so that the
    decisions at every threshold are not all alike."""
    path = family_checkpoint("smallcnn")
    ref = CheckpointRunner(path, device="cpu", precision="fp32", channels_last=False)
    s = ref.preprocess.img_size
    g = torch.Generator().manual_seed(0)
    bank = ref.features(torch.randn(40, 3, s, s, generator=g)).half()
    k = 3
    held = torch.randn(24, 3, s, s, generator=g)
    _, scores = ref.ood_scores(held)
    scores["knn"] = ood.knn_distance(ref.features(held).numpy(), bank.float().numpy(), k)
    record = ood.fit_record(scores, accept=0.5, temperature=1.0, bank_size=len(bank), k=k)
    ckpt = load_checkpoint(path)
    ckpt["ood"] = {"record": record, "bank": bank}
    out = tmp_path_factory.mktemp("bank") / "bank.pt"
    save_checkpoint(ckpt, str(out))
    return str(out)


@pytest.fixture(scope="module")
def bank_onnx(bank_ckpt, tmp_path_factory) -> dict:
    return export(bank_ckpt, "onnx", out=str(tmp_path_factory.mktemp("onnx") / "m.onnx"), **SMALL)


def _float16_bank(path: str, bank: torch.Tensor) -> bool:
    """Whether the graph holds `bank` (or its transpose) as a float16 constant, and no float32 copy of it."""
    from onnx import numpy_helper

    g = onnx.load(path).graph
    arrays = [numpy_helper.to_array(i) for i in g.initializer]
    arrays += [
        numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant" and n.attribute[0].t.dims
    ]
    want = bank.float().numpy()
    same = [
        a for a in arrays if any(a.shape == w.shape and np.array_equal(a.astype(np.float32), w) for w in (want, want.T))
    ]
    return bool(same) and all(a.dtype == np.float16 for a in same)


def test_onnx_export_with_a_bank_gives_logits_features_and_knn_as_the_checkpoint(bank_ckpt, bank_onnx):
    import onnxruntime as ort

    path = bank_onnx["out"]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "features", "knn"]
    assert all(isinstance(o.shape[0], str) for o in sess.get_outputs())  # the batch dimension is dynamic
    ref = CheckpointRunner(bank_ckpt, device="cpu", precision="fp32", channels_last=False)
    runner = open_model(path, device="cpu")
    x = _val_images(ref)
    want, got = ref.outputs(x), runner.outputs(x)
    assert set(got) == {"logits", "features", "knn"}
    assert (got["features"] - want["features"]).abs().max() < 1e-4
    assert (got["knn"] - want["knn"]).abs().max() < 1e-4
    assert got["knn"].shape == (len(x),)
    one = runner.outputs(x[:1])  # a batch of one
    assert (one["knn"] - want["knn"][:1]).abs().max() < 1e-4
    assert _float16_bank(path, ref.bank)
    # the record and the outputs are in the metadata; the verification checked them and the decisions
    record = load_checkpoint(bank_ckpt)["ood"]["record"]
    assert runner.ood == record and set(record["thresholds"]) == {"msp", "energy", "knn"}
    assert [o["name"] for o in bank_onnx["outputs"]] == ["logits", "features", "knn"]
    assert bank_onnx["outputs"][1]["shape"] == ["batch", ref.bank.shape[1]]
    v = bank_onnx["verification"]
    assert v["ok"] and set(v["outputs"]) == {"features", "knn"} and set(v["ood"]) == {"msp", "energy", "knn"}
    assert all(r["agreement"] == 1.0 and r["images"] == 12 for r in v["ood"].values()), v["ood"]
    assert 0 < v["ood"]["knn"]["unknown_checkpoint"] < 12  # the thresholds decide something on these images
    # the slim server's reading of it: the scores from the outputs alone
    scores = ood.scores({k: t.numpy() for k, t in got.items()}, runner.task)
    assert set(scores) == {"msp", "energy", "knn"}


def test_torchscript_metadata_carries_the_record_without_knn(bank_ckpt, tmp_path):
    r = export(bank_ckpt, "torchscript", out=str(tmp_path / "m.ts"), **SMALL)
    runner = open_model(r["out"], device="cpu")
    assert set(runner.ood["thresholds"]) == {"msp", "energy"}
    assert runner.ood["accept"] == 0.5 and set(r["verification"]["ood"]) == {"msp", "energy"}
    assert set(runner.outputs(_val_images(runner, 2))) == {"logits"}


def test_a_file_s_record_keeps_what_it_can_compute():
    rec = {"thresholds": {"msp": 0.5, "energy": -1.0, "knn": 0.7}, "accept": 0.95}
    assert ood.usable(rec, "knn" in ["logits", "features", "knn"]) == rec
    assert ood.usable(rec, "knn" in ["logits", "features"])["thresholds"] == {"msp": 0.5, "energy": -1.0}
    assert ood.usable({"thresholds": {"knn": 0.7}, "accept": 0.95}, "knn" in ["logits"]) is None
    assert ood.usable(None, "knn" in ["logits"]) is None


def test_onnx_int8_keeps_the_outputs_and_leaves_the_knn_part_fp32(bank_ckpt, tmp_path):
    r = export(bank_ckpt, "onnx-int8", out=str(tmp_path / "m.onnx"), **SMALL)
    model = onnx.load(r["out"])
    assert [o.name for o in model.graph.output] == ["logits", "features", "knn"]
    ops = {n.name: n.op_type for n in model.graph.node}
    kept = feature_nodes(model)
    assert {"MatMul", "TopK", "Sqrt"} <= {ops[n] for n in kept}
    assert not {"QuantizeLinear", "DequantizeLinear"} & {ops[n] for n in kept}
    assert "QuantizeLinear" in ops.values()  # the rest is quantized
    assert r["export"]["quantization"]["fp32_output_nodes"]
    v = r["verification"]
    assert v["ok"] and v["outputs"]["features"]["min_cosine"] > 0.9 and "agreement_upper" in v["ood"]["knn"]
    runner = open_model(r["out"], device="cpu")
    assert set(runner.outputs(_val_images(runner, 3))) == {"logits", "features", "knn"}
    assert _float16_bank(r["out"], CheckpointRunner(bank_ckpt, device="cpu").bank)


def test_the_torchscript_based_fallback_has_the_same_outputs(bank_ckpt, tmp_path, monkeypatch):
    def no_dynamo(*a, **k):
        raise RuntimeError("dynamo cannot take this model")

    monkeypatch.setattr(writers, "torch_export", no_dynamo)
    r = export(bank_ckpt, "onnx", out=str(tmp_path / "m.onnx"), **SMALL)
    assert r["export"]["exporter"] == "torchscript-based" and r["verification"]["ok"]
    assert [o["name"] for o in r["outputs"]] == ["logits", "features", "knn"]
    assert _float16_bank(r["out"], CheckpointRunner(bank_ckpt, device="cpu").bank)


def test_a_checkpoint_without_a_record_exports_as_before_with_features(family_checkpoint, tmp_path):
    r = export(family_checkpoint("test_tiny"), "onnx", out=str(tmp_path / "m.onnx"), **SMALL)
    runner = open_model(r["out"], device="cpu")
    assert [o["name"] for o in r["outputs"]] == ["logits", "features"] and runner.ood is None
    assert "ood" not in r["verification"] and r["verification"]["outputs"]["features"]["max_abs_diff"] < 1e-4
    meta = json.loads(next(p.value for p in onnx.load(r["out"]).metadata_props if p.key == "imgclf"))
    assert meta["output"] == {"name": "logits", "shape": ["batch", 3]}  # for older readers
    assert [o["name"] for o in meta["outputs"]] == ["logits", "features"] and "ood" not in meta


def test_verification_refuses_outputs_and_decisions_that_differ():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 3, generator=g)
    feats = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    knn = torch.rand(20, generator=g)
    want = {"logits": logits, "features": feats, "knn": knn}
    why: list[str] = []
    check_outputs(want, dict(want), ["features", "knn"], int8=False, why=why)
    assert why == []
    check_outputs(want, {**want, "knn": knn + 0.01}, ["features", "knn"], int8=False, why=why)
    assert len(why) == 1 and "knn" in why[0]
    record = {"thresholds": {"knn": float(knn.median())}}
    why = []
    r = ood_decisions(want, {**want, "knn": knn + 0.3}, record, "single", int8=False, logit_tol=1e-3, why=why)
    assert r["knn"]["agreement"] < 1.0 and why and "knn out-of-distribution decisions differ" in why[0]
    why = []  # a decision changed by less than the tolerance is a borderline one, not a failure
    t = float(knn[0])
    got = {**want, "knn": knn + 1e-4}
    r = ood_decisions(want, got, {"thresholds": {"knn": t + 5e-5}}, "single", int8=False, logit_tol=1e-3, why=why)
    assert r["knn"]["kept"] == 19 and why == []
