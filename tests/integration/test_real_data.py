"""Integration tests on the real datasets in ../shared/data (skipped, with the reason, where it is absent)."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from shared_data import CIFAR, HYM, need_cifar, need_hym

from imgclf.cli.main import main

pytestmark = pytest.mark.integration

# ImageNet-1k class indices of the two hymenoptera classes.
IMAGENET_ANT, IMAGENET_BEE = 310, 309


@need_hym
@pytest.mark.kernels
def test_efficientnet_lite0_imagenet_weights_tell_ants_from_bees_without_training():
    """Proves the offline EfficientNet-Lite0 weights and their preprocessing are loaded right: the untouched
    ImageNet head's 'ant' logit against its 'bee' logit classifies hymenoptera/val."""
    from imgclf.data.images import load_image, pil_to_uint8
    from imgclf.data.pipeline import eval_transform, resolve_preprocess
    from imgclf.models.registry import build_model, get_spec

    spec = get_spec("efficientnet_lite0")
    model = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    prep = resolve_preprocess(spec, img_size=None, pretrained=True, own_size=None)
    tf = eval_transform(prep)
    correct = total = 0
    for cls, want in (("ants", IMAGENET_ANT), ("bees", IMAGENET_BEE)):
        paths = sorted(glob.glob(str(HYM / "val" / cls / "*")))
        x = torch.stack([tf(pil_to_uint8(load_image(p, resize=prep.resize))) for p in paths])
        with torch.no_grad():
            logits = torch.cat([model(b) for b in x.split(32)])
        pred = torch.where(logits[:, IMAGENET_ANT] > logits[:, IMAGENET_BEE], IMAGENET_ANT, IMAGENET_BEE)
        correct += int((pred == want).sum())
        total += len(paths)
    assert total == 153
    assert correct / total >= 0.90, f"{correct}/{total}"


def _plant_faults(root: Path) -> dict[str, str]:
    """A small copy of hymenoptera with one of each fault the check must name."""
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for p in sorted((HYM / split / cls).glob("*.jpg"))[:8]:
                shutil.copy(p, dst / p.name)
    train_ant = sorted((root / "train" / "ants").glob("*.jpg"))
    faults = {}
    (root / "train" / "ants" / "empty.jpg").write_bytes(b"")
    faults["zero-byte"] = "train/ants/empty.jpg"
    data = train_ant[1].read_bytes()
    (root / "train" / "ants" / "cut.jpg").write_bytes(data[: len(data) // 2])
    faults["truncated"] = "train/ants/cut.jpg"
    (root / "train" / "bees" / "notes.jpg").write_text("this is not an image\n")
    faults["not-an-image"] = "train/bees/notes.jpg"
    from PIL import Image

    with Image.open(train_ant[2]) as im:
        im.convert("RGB").save(root / "train" / "ants" / "really_png.jpg", format="PNG")
    faults["extension-mismatch"] = "train/ants/really_png.jpg"
    shutil.copy(train_ant[3], root / "val" / "ants" / "leaked.jpg")
    faults["leak-across-splits"] = "val/ants/leaked.jpg"
    shutil.copy(train_ant[4], root / "train" / "bees" / "wrong_label.jpg")
    faults["duplicate-across-labels"] = "train/bees/wrong_label.jpg"
    return faults


@need_hym
def test_check_names_planted_faults_and_training_leaves_them_out(tmp_path, capsys):
    root = tmp_path / "faulty"
    faults = _plant_faults(root)
    assert main(["check", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    found = {(f["kind"], p) for f in report["errors"] + report["warnings"] for p in f["paths"]}
    for kind, path in faults.items():
        assert any(k == kind and p.endswith(path) for k, p in found), (kind, path, sorted(found))

    # Training on the faulty copy completes and lists what it left out.
    assert (
        main(
            [
                "train",
                "--data",
                str(root),
                "--model",
                "test_tiny",
                "--img-size",
                "32",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "runs"),
                "--name",
                "faulty",
            ]
        )
        == 0
    )
    with open(tmp_path / "runs" / "faulty" / "left_out.csv") as f:
        left = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(left) == {"empty.jpg", "cut.jpg", "notes.jpg"}, left
    assert "zero-byte" in left["empty.jpg"] and "truncated" in left["cut.jpg"] and "not an image" in left["notes.jpg"]
    assert "left out 3 unreadable files" in capsys.readouterr().err


@need_hym
def test_check_real_hymenoptera_has_no_errors(capsys):
    assert main(["check", str(HYM)]) == 0
    assert "0 errors" in capsys.readouterr().out


@need_hym
def test_finetune_hymenoptera_then_predict_a_bee(tmp_path, capsys):
    """Two epochs of the seed's strategy (frozen backbone, new head) and a bee photo is called a bee."""
    out = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "--data",
                str(HYM),
                "--model",
                "efficientnet_lite0",
                "--pretrained",
                "--freeze",
                "backbone",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--name",
                "hym",
            ]
        )
        == 0
    )
    capsys.readouterr()  # the training summary
    best = out / "hym" / "best.pt"
    assert main(["evaluate", str(best), "--split", "val", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["num_images"] == 153 and m["accuracy"] >= 0.85, m["accuracy"]
    bee = sorted((HYM / "val" / "bees").glob("*.jpg"))[0]
    assert main(["predict", str(best), str(bee), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["label"] == "bees", r


@need_cifar
def test_cifar10_jpg_train_one_epoch_and_evaluate_test_split(tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            ["train", "--data", str(CIFAR), "--model", "test_tiny", "--epochs", "1", "--out", str(out), "--name", "c10"]
        )
        == 0
    )
    capsys.readouterr()  # the training summary
    cfg = (out / "c10" / "config.yaml").read_text()
    assert "img_size: 32" in cfg  # the data's own size
    assert main(["evaluate", str(out / "c10" / "best.pt"), "--split", "test", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    cm = m["confusion_matrix"]
    assert len(cm) == 10 and all(len(r) == 10 for r in cm)
    assert sum(map(sum, cm)) == 10_000 == m["num_images"]
    assert m["top5_accuracy"] is not None and 0.1 < m["accuracy"] <= 1.0
    assert os.path.exists(out / "c10" / "eval-test" / "confusion_matrix.png")
