"""Exported files point to the model card (evaluation/card.py): its path relative to the export and its sha256 in
the metadata; an export into another folder gets a copy of the card beside it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from imgclf.evaluation.card import CARD_NAME
from imgclf.exporting.export import export
from imgclf.infer.runtime import open_model

pytest.importorskip("onnxruntime")

SMALL = dict(calib_images=8, verify_images=8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_an_export_beside_the_checkpoint_points_to_its_card(run):
    r = export(str(run / "best.pt"), "onnx", **SMALL)
    assert r["model_card"] == str(run / CARD_NAME)
    pointer = open_model(str(run / "best.onnx")).metadata()["model_card"]
    assert pointer == {"file": CARD_NAME, "sha256": sha256(run / CARD_NAME), "describes_checkpoint": True}
    assert json.loads((run / "best.onnx.json").read_text())["model_card"] == str(run / CARD_NAME)


def test_an_export_elsewhere_gets_a_copy_and_never_overwrites_another_models_card(run, tmp_path):
    out = tmp_path / "deploy"
    export(str(run / "best.pt"), "torchscript", out=str(out / "m.ts"), **SMALL)
    assert (out / CARD_NAME).read_bytes() == (run / CARD_NAME).read_bytes()
    assert open_model(str(out / "m.ts")).metadata()["model_card"]["file"] == CARD_NAME

    (out / CARD_NAME).write_text("the card of another model\n")
    export(str(run / "best.pt"), "torchscript", out=str(out / "m2.ts"), **SMALL)
    assert (out / CARD_NAME).read_text() == "the card of another model\n"
    copy = out / f"m2.ts.{CARD_NAME}"
    assert copy.read_bytes() == (run / CARD_NAME).read_bytes()
    assert open_model(str(out / "m2.ts")).metadata()["model_card"]["file"] == copy.name


def test_a_stale_card_is_said_so_and_no_card_no_pointer(run, caplog):
    text = (run / CARD_NAME).read_text()
    (run / CARD_NAME).write_text(text.replace(sha256(run / "best.pt"), "0" * 64))
    export(str(run / "best.pt"), "onnx", **SMALL)
    assert open_model(str(run / "best.onnx")).metadata()["model_card"]["describes_checkpoint"] is False
    assert any("describes other weights" in r.getMessage() for r in caplog.records)

    (run / CARD_NAME).unlink()
    r = export(str(run / "best.pt"), "onnx", **SMALL)
    assert "model_card" not in r and "model_card" not in open_model(str(run / "best.onnx")).metadata()
