"""Every export format verified on real data and real models (skipped, with the reason, where ../shared/data
is absent): an EfficientNet-Lite0 fine-tune on hymenoptera (int8 accuracy against fp32 on all of val), a
ResNet-18 at 224 px, and airnet (flip-and-shift test-time augmentation inside forward) on CIFAR-10 images."""

from __future__ import annotations

import csv
import json

import pytest
from shared_data import CIFAR, HYM, need_cifar, need_hym

from imgclf.cli.main import main
from imgclf.exporting.export import FORMATS

pytestmark = [pytest.mark.integration, pytest.mark.kernels]


def _train(capsys, tmp_path, *args) -> str:
    assert main(["train", *args, "--out", str(tmp_path), "--name", "m", "-q"]) == 0
    capsys.readouterr()  # the training summary, before the exports' JSON
    return str(tmp_path / "m" / "best.pt")


def _export(capsys, weights, fmt, out, *args) -> dict:
    assert main(["export", weights, "--format", fmt, "--out", str(out), "--json", "-q", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _export_all(capsys, weights, folder, *args) -> dict:
    reports = {}
    for name, f in FORMATS.items():
        r = _export(capsys, weights, name, folder / f"model{f.suffix}", *args)
        assert r["verification"]["ok"], (name, r["verification"])
        reports[name] = r
    return reports


@pytest.mark.heavy  # minutes of CPU: out of the default run (its 15-minute budget), in .ci/run's -m heavy and -m kernels
@need_hym
def test_lite0_finetune_every_format_and_int8_accuracy(tmp_path, capsys):
    weights = _train(
        capsys,
        tmp_path,
        "--data",
        str(HYM),
        "--model",
        "efficientnet_lite0",
        "--pretrained",
        "--freeze",
        "backbone",
        "--epochs",
        "3",
    )
    # verification on the default images: all of hymenoptera's 153 val images (up to 500), and the int8 rule's
    # bound, so that one image of the CPU's int8 kernels cannot decide it (64 images and a point rule did)
    reports = _export_all(capsys, weights, tmp_path, "--calib-images", "128")
    assert {r["verification"]["images"] for r in reports.values()} == {153}
    q = reports["onnx-int8"]["export"]["quantization"]
    assert q["tries"][q["chosen_try"] - 1]["ok"] and q["calibration"] in ("minmax", "entropy", "percentile")
    r = _export(capsys, weights, "onnx-int8", tmp_path / "acc.int8.onnx", "--data", str(HYM))
    a = r["accuracy"]
    assert a["images"] == 153
    # The target is at most 1.0 point, measured on the 10-epoch fine-tune in docs/benchmarks.md. One val
    # image is 0.65 points, so this 3-epoch model is held to at most 3 images (2 points) to stay a stable test.
    assert a["drop_points"] <= 2.0, a
    for name in ("torchscript", "pt2", "onnx"):
        assert reports[name]["verification"]["top1_agreement"] == 1.0


@need_hym
@pytest.mark.heavy  # 166 s in the default run of 2026-12-06 (ONNX exports now verify features and kNN too): in .ci/run's -m heavy
def test_resnet18_224_every_format(tmp_path, capsys):
    weights = _train(
        capsys,
        tmp_path,
        "--data",
        str(HYM),
        "--model",
        "resnet18",
        "--img-size",
        "224",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "32",
    )
    _export_all(capsys, weights, tmp_path, "--verify-images", "32", "--calib-images", "64")


@pytest.mark.heavy  # minutes of CPU: out of the default run (its 15-minute budget), in .ci/run's -m heavy and -m kernels
@need_cifar
def test_airnet_with_test_time_augmentation_every_format(tmp_path, capsys):
    """A CIFAR-10 subset (2,000 train, 500 test images) through a CSV manifest; exports must carry the
    flip-and-shift TTA that airnet does in eval mode, or verification against eager PyTorch fails."""
    rows = []
    for split, n in (("train", 200), ("test", 50)):
        for cls in sorted(p.name for p in (CIFAR / split).iterdir()):
            files = sorted((CIFAR / split / cls).iterdir())[:n]
            rows += [(str(p), cls, split) for p in files]
    manifest = tmp_path / "cifar-subset.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    weights = _train(capsys, tmp_path, "--data", str(manifest), "--model", "airnet", "--epochs", "2")
    for name in ("torchscript", "pt2", "onnx", "dynamic-int8"):
        r = _export(capsys, weights, name, tmp_path / f"model{FORMATS[name].suffix}", "--verify-images", "128")
        assert r["verification"]["ok"] and r["verification"]["top1_agreement"] >= (0.97 if FORMATS[name].int8 else 1.0)
    # onnx-int8 on this briefly trained model (2 epochs of the seed's recipe on 2,000 images, unsure of most
    # images) flipped ~20% of the labels when measured: the verification must refuse it and leave no file.
    # The fast recipe's real CIFAR-10 model passes (100% agreement, 0.04 points): docs/benchmarks.md.
    out = tmp_path / "model.int8.onnx"
    code = main(["export", weights, "--format", "onnx-int8", "--out", str(out), "-q", "--verify-images", "128"])
    err = capsys.readouterr().err
    assert (code == 0 and out.is_file()) or (code == 1 and "failed verification" in err and not out.exists()), err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.int8.onnx")]  # no temporary left
