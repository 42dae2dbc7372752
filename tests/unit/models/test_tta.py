"""Test-time augmentation (--tta) on predict, evaluate and export, and its usage errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models.checkpoint import load_checkpoint
from imgclf.models.tta import average

# probabilities of a calibrated path against the same numbers computed by hand, both fp32 on one machine
PROB_TOL = 1e-5


# an ONNX export's probabilities against eager PyTorch: fp32 logits agree to 1e-3 of their scale (exporting.py's
# rule) and a softmax moves by at most a quarter of a logit change (its Jacobian), so this holds on every kernel
EXPORT_PROB_TOL = 2e-3


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


def test_tta_flip_is_the_mean_of_the_two_passes(tiny_best, tiny_data):
    paths = _val_paths(tiny_data)[:6]
    plain = CheckpointRunner(tiny_best, device="cpu")
    x = _images(plain, paths)
    want = 0.5 * (plain.logits(x).softmax(1) + plain.logits(x.flip(-1)).softmax(1))
    pred = Predictor(tiny_best, device="cpu", tta="flip")
    got = pred.runner.logits(x).softmax(1)
    assert (got - want).abs().max() <= PROB_TOL
    rows = pred.predict(paths, top_k=3)
    assert [r["probability"] for r in rows] == pytest.approx(want.max(1).values.tolist(), abs=PROB_TOL)


def test_tta_flip_crop_of_a_flat_image_is_the_plain_prediction(tiny_best):
    """Every view of a one-colour image is that image: the six weights sum to 1."""
    plain = CheckpointRunner(tiny_best, device="cpu")
    x = torch.full((2, 3, 16, 16), 0.3)
    x[1] = -0.7
    fc = CheckpointRunner(tiny_best, device="cpu", tta="flip-crop")
    assert (fc.logits(x).softmax(1) - plain.logits(x).softmax(1)).abs().max() <= PROB_TOL
    calls = []
    average(lambda v: calls.append(v) or v.sum(), x, "flip-crop", 1)
    assert len(calls) == 6 and all(v.shape == x.shape for v in calls)


def test_evaluate_with_tta_writes_its_own_folder(tiny_best, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    best = shutil.copy(tiny_best, run / "best.pt")
    for tta in ("flip", "flip-crop"):
        assert main(["evaluate", str(best), "--tta", tta, "--device", "cpu", "--workers", "0"]) == 0
        m = json.loads((run / f"eval-val-tta-{tta}" / "eval.json").read_text())
        assert m["tta"] == tta and m["num_images"] == 18


@pytest.mark.kernels
def test_export_tta_bakes_the_averaging_and_reports_accuracy(tiny_best, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "flip.onnx"
    assert main(["export", tiny_best, "--format", "onnx", "--tta", "flip", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tta"] == "flip" and rep["verification"]["ok"]
    a = rep["accuracy"]
    assert a["tta"] == "flip" and {"checkpoint", "onnx", "checkpoint_without_tta", "tta_gain_points"} <= set(a)
    exported = open_model(str(out), device="cpu")
    assert exported.tta == "flip"
    ref = CheckpointRunner(tiny_best, device="cpu", tta="flip")
    x = _images(ref, _val_paths(tiny_best))
    assert (exported.logits(x).softmax(1) - ref.logits(x).softmax(1)).abs().max() <= EXPORT_PROB_TOL
    with pytest.raises(UsageError, match="exported with --tta flip"):
        open_model(str(out), device="cpu", tta="flip-crop")


def test_tta_and_calibrate_usage_errors(tiny_best, tiny_data, tmp_path, capsys):
    img = _val_paths(tiny_data)[0]
    assert main(["predict", tiny_best, img, "--tta", "sideways"]) == 2
    assert main(["evaluate", tiny_best, "--tta", "flop"]) == 2
    assert main(["export", tiny_best, "--format", "onnx", "--tta", "mirror"]) == 2
    assert main(["calibrate", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--tta"):
        CheckpointRunner(tiny_best, device="cpu", tta="sideways")


@pytest.mark.parametrize("mode", [None, "flip", "flip-crop"])
def test_multilabel_tta_averages_sigmoids_with_a_temperature_per_label(mode):
    from imgclf.models.tta import wrap

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    t = [0.5, 1.0, 3.0]
    x = torch.randn(4, 3, 16, 16)
    trusted = wrap(net, temperature=t, tta=mode, img_size=16, task="multilabel")
    with torch.no_grad():
        got = trusted(x).sigmoid()
        want = average(lambda v: (net(v) / torch.tensor(t)).sigmoid(), x, mode or "none", shift=1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got.sum(1), torch.ones(4))  # sigmoids, not a softmax
