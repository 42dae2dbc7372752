"""The run directory that training leaves behind, and its checkpoints loading with weights_only."""

from __future__ import annotations

import json

import pytest
import torch

TINY_CLASSES = ("cat", "dog", "fox")  # conftest.tiny_data


def test_run_directory_contents(tiny_run):
    for name in (
        "config.yaml",
        "best.pt",
        "last.pt",
        "metrics.csv",
        "results.json",
        "curves.png",
        "confusion_matrix.png",
    ):
        assert (tiny_run / name).is_file(), name
    assert list(tiny_run.glob("events.out.tfevents.*")), "no TensorBoard events file"
    lines = (tiny_run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,val_macro_f1,lr,seconds"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["1", "2"]
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["epochs"] == 2 and results["model"] == "test_tiny"
    assert results["classes"] == sorted(TINY_CLASSES)
    assert 1 <= results["best_epoch"] <= 2

    import yaml

    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["model"] == "test_tiny" and cfg["epochs"] == 2


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_checkpoints_load_weights_only(tiny_run, name):
    ckpt = torch.load(tiny_run / name, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "imgclf-checkpoint"
    assert ckpt["classes"] == sorted(TINY_CLASSES)
    assert ckpt["model"] == {"name": "test_tiny", "num_classes": 3}
    assert {"img_size", "resize", "mean", "std"} <= set(ckpt["preprocess"])
    assert ckpt["preprocess"]["img_size"] == 16
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


def test_a_rank_that_does_not_write_writes_nothing(tmp_path):
    """Issue 22 (1): under torchrun rank 0 alone writes the run folder, split.csv and --lr auto's lr_find.* included:
    every rank wrote split.csv and they raced over the folder and each other's temporary files."""
    from imgclf.data.sources import DataSource, Split
    from imgclf.training.rundir import RunDir

    src = DataSource("folder", str(tmp_path), ["a", "b"], {"train": Split("train", [0, 1], paths=["x", "y"])})
    lr = {"suggestion": 0.1, "reason": "r", "lrs": [0.01, 0.1], "losses": [1.0, 0.5], "raw_losses": [1.0, 0.5]}
    folder = tmp_path / "run"
    with RunDir(str(folder), write=False) as rd:
        rd.write_split(src)
        rd.write_lr_find(lr)
        rd.write_config({"a": 1})
        rd.write_left_out([])
    assert not folder.exists()
    with RunDir(str(folder)) as rd:
        rd.write_split(src)
        rd.write_lr_find(lr)
    assert {"split.csv", "lr_find.json", "lr_find.png"} <= {p.name for p in folder.iterdir()}
