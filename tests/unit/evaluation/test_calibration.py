"""Calibration: the calibration error, temperature scaling through every path (calibrate, predict, evaluate,
exports, train --calibrate)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from imgclf.cli.main import main
from imgclf.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    selective,
)
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

# probabilities of a calibrated path against the same numbers computed by hand, both fp32 on one machine
PROB_TOL = 1e-5


# an ONNX export's probabilities against eager PyTorch: fp32 logits agree to 1e-3 of their scale (exporting.py's
# rule) and a softmax moves by at most a quarter of a logit change (its Jacobian), so this holds on every kernel
EXPORT_PROB_TOL = 2e-3


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory, make_folder):
    """The tiny data's classes and colours, with 5 of the 18 val images in the wrong class folder: a model that
    goes by colour is wrong on those, so a confident one is over-confident."""
    root = make_folder(tmp_path_factory.mktemp("mis") / "pets", classes=("cat", "dog", "fox"), n=4, n_val=6, seed=3)
    moves = [
        (p, dst)
        for src, dst, k in (("cat", "dog", 2), ("dog", "fox", 2), ("fox", "cat", 1))
        for p in sorted((root / "val" / src).iterdir())[:k]
    ]
    for p, dst in moves:  # chosen first: an image moved once is not moved again
        shutil.move(str(p), str(root / "val" / dst / ("moved_" + p.name)))
    return root


@pytest.fixture(scope="module")
def calibrated(tiny_best, mislabelled, tmp_path_factory) -> tuple[str, object]:
    """A copy of the tiny checkpoint made over-confident (its head x 100: the 2-epoch model's logits are ~0.1
    apart), calibrated: (path, result)."""
    path = str(tmp_path_factory.mktemp("cal") / "best.pt")
    ckpt = load_checkpoint(tiny_best)
    for k in ("fc.weight", "fc.bias"):
        ckpt["state_dict"][k] = ckpt["state_dict"][k] * 100
    save_checkpoint(ckpt, path)
    before = load_checkpoint(path)
    result = calibrate(path, str(mislabelled), device="cpu", workers=0)
    after = load_checkpoint(path)  # weights_only=True, validated
    assert set(after) == set(before) | {"temperature", "calibration"}
    for k in before:
        if k not in ("state_dict", "ood"):  # the out-of-distribution record is fitted again (test_ood_fit.py)
            assert after[k] == before[k], k
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert after["temperature"] == result.temperature == after["ood"]["record"]["temperature"]
    return path, result


def _val_paths(path_or_data) -> list[str]:
    from pathlib import Path

    root = Path(load_checkpoint(path_or_data)["config"]["data"]) if str(path_or_data).endswith(".pt") else path_or_data
    return sorted(str(p) for p in (Path(root) / "val").rglob("*") if p.is_file())


def _images(runner, paths) -> torch.Tensor:
    from imgclf.data.images import load_image, pil_to_uint8
    from imgclf.data.pipeline import eval_transform

    tf, prep = eval_transform(runner.preprocess), runner.preprocess
    return torch.stack(
        [tf(pil_to_uint8(load_image(p, resize=prep.resize, interpolation=prep.interpolation))) for p in paths]
    )


def _evaluate(path, data, out, *more) -> str:
    argv = ["evaluate", str(path), "--data", str(data), "--out", str(out), "--device", "cpu", "--workers", "0"]
    assert main([*argv, *more]) == 0
    return (out / "eval.json").read_text()


def test_ece_against_a_hand_computed_example():
    # top-1 confidences 0.95 (right), 0.95 (wrong): bin (14/15, 1], accuracy 0.5, confidence 0.95;
    # 0.58 (right), 0.56 (right): bin (8/15, 9/15], accuracy 1, confidence 0.57
    # ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.57| = 0.225 + 0.215 = 0.44
    probs = [[0.95, 0.05], [0.05, 0.95], [0.58, 0.42], [0.44, 0.56]]
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.44, abs=1e-12)
    rows = reliability(probs, labels)
    assert len(rows) == 15 and [r["images"] for r in rows if r["images"]] == [2, 2]
    assert rows[8]["low"] == pytest.approx(8 / 15) and rows[8]["confidence"] == pytest.approx(0.57)
    assert rows[14]["accuracy"] == 0.5 and rows[0]["accuracy"] is None
    # a perfectly calibrated set: confidence 1 and right
    assert expected_calibration_error([[1.0, 0.0]], torch.tensor([0])) == 0.0


def test_selective_coverage_and_accuracy():
    probs = [[0.95, 0.05], [0.05, 0.95], [0.58, 0.42], [0.44, 0.56]]
    rows = selective(probs, torch.tensor([0, 0, 0, 1]), thresholds=(0.5, 0.7, 0.99))
    assert [r["coverage"] for r in rows] == [1.0, 0.5, 0.0]
    assert [r["accuracy"] for r in rows] == [0.75, 0.5, None]


def test_temperature_fit_lowers_nll_of_an_over_confident_model_and_keeps_its_labels():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 4, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)  # labels drawn from softmax(z): calibrated
    over = 6.0 * z  # the same ranking, six times too sure
    t = fit_temperature(over, labels)
    assert 4.5 < t < 8.0  # the true factor is 6; the fit is from 2000 draws
    assert nll(over, labels, t) < nll(over, labels) - 0.5
    assert torch.equal((over / t).argmax(1), over.argmax(1))
    before = expected_calibration_error(over.softmax(1), labels)
    assert expected_calibration_error((over / t).softmax(1), labels) < before / 2


def test_calibrate_fits_t_that_lowers_ece_and_nll_and_keeps_accuracy(calibrated):
    path, r = calibrated
    assert r.temperature > 1.0 and r.previous_temperature == 1.0 and r.images == 18
    assert r.nll_after < r.nll_before and r.ece_after < r.ece_before
    assert CheckpointRunner(path, device="cpu", temperature=1.0).temperature == 1.0
    assert CheckpointRunner(path, device="cpu").temperature == r.temperature
    assert 0 < r.accuracy < 1


def test_cli_calibrate_prints_ece_before_and_after(calibrated, mislabelled, capsys):
    path, r = calibrated
    assert main(["calibrate", path, "--data", str(mislabelled), "--device", "cpu", "--workers", "0", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    # fitted again from the raw logits: the same T; "before" is now the stored T
    assert again["temperature"] == pytest.approx(r.temperature, rel=1e-4)
    assert again["previous_temperature"] == r.temperature and again["ece_before"] == pytest.approx(r.ece_after)
    assert main(["calibrate", path, "--data", str(mislabelled), "--device", "cpu", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "ECE (15 bins)" in out and "->" in out and "accuracy" in out


def test_temperature_reaches_predict_and_evaluate(calibrated, mislabelled, tmp_path):
    path, r = calibrated
    paths = _val_paths(mislabelled)
    raw = CheckpointRunner(path, device="cpu", temperature=1.0)
    want = (raw.logits(_images(raw, paths)) / r.temperature).softmax(1)
    got = Predictor(path, device="cpu").predict(paths, top_k=3)
    for row, p in zip(got, want):
        assert row["probability"] == pytest.approx(float(p.max()), abs=PROB_TOL)
    m = json.loads(_evaluate(path, mislabelled, tmp_path / "ev"))
    assert m["calibration"]["temperature"] == r.temperature
    assert m["calibration"]["ece"] == pytest.approx(r.ece_after, abs=1e-4)  # the split it was fitted on
    assert m["loss"] == pytest.approx(r.nll_after, abs=1e-4)
    assert (tmp_path / "ev" / "reliability.png").stat().st_size > 0


def test_evaluate_reports_ece_and_coverage(tiny_best, tmp_path, capsys):
    assert main(["evaluate", tiny_best, "--out", str(tmp_path), "--device", "cpu", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "ECE (15 bins)" in out and "not calibrated" in out and "confidence >= 0.5:" in out
    m = json.loads((tmp_path / "eval.json").read_text())
    c = m["calibration"]
    assert c["temperature"] == 1.0 and c["ece_bins"] == 15 and len(c["reliability"]) == 15
    assert [s["threshold"] for s in c["selective"]] == [0.5, 0.7, 0.9] and m["tta"] is None
    assert sum(b["images"] for b in c["reliability"]) == m["num_images"]


@pytest.mark.kernels
def test_temperature_is_in_the_onnx_graph(calibrated, mislabelled, tmp_path):
    pytest.importorskip("onnxruntime")
    from imgclf.exporting.export import export

    path, r = calibrated
    rep = export(path, "onnx", out=str(tmp_path / "m.onnx"), verify_data=str(mislabelled), verify_images=18)
    assert rep["temperature"] == r.temperature
    onnx = open_model(rep["out"], device="cpu")
    assert onnx.temperature == r.temperature  # recorded in the metadata, applied in the graph only
    ref = CheckpointRunner(path, device="cpu")
    x = _images(ref, _val_paths(mislabelled))
    assert (onnx.logits(x).softmax(1) - ref.logits(x).softmax(1)).abs().max() <= EXPORT_PROB_TOL
    raw = CheckpointRunner(path, device="cpu", temperature=1.0).logits(x)
    assert (onnx.logits(x) - raw / r.temperature).abs().max() <= 1e-3 * max(1.0, float(raw.abs().max()))


def test_a_damaged_temperature_is_refused(tiny_best, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_best)
    ckpt["temperature"] = -1.0
    path = str(tmp_path / "bad.pt")
    torch.save(ckpt, path)
    assert main(["evaluate", path, "--out", str(tmp_path / "e"), "--device", "cpu"]) == 2
    assert "'temperature'" in capsys.readouterr().err


def test_train_calibrate_stores_the_fitted_temperature_in_best_pt(tmp_path, make_folder):
    from conftest import train_tiny

    from imgclf.models.checkpoint import temperature_of

    data = str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))
    res = train_tiny(tmp_path, data, "cal", epochs=2, calibrate=True)
    cal = res["calibration"]
    best = load_checkpoint(f"{res['run_dir']}/best.pt")
    assert temperature_of(best) == pytest.approx(cal["temperature"]) and cal["temperature"] != 1.0
    assert cal["split"] == "val" and cal["images"] == 12 and cal["nll_after"] <= cal["nll_before"] + 1e-6
    assert "ECE (15 bins)" in open(f"{res['run_dir']}/train.log").read()
    assert temperature_of(load_checkpoint(f"{res['run_dir']}/last.pt")) == 1.0  # only best.pt is calibrated
    # the out-of-distribution fit follows the calibration, with its temperature, once (by the run, from its data)
    assert best["ood"]["record"]["temperature"] == temperature_of(best) and best["ood"]["record"]["by"] == "train"
    assert res["ood"] == best["ood"]["record"] and "ood" not in cal
