from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imgclf.core.errors import DataError
from imgclf.data.check import CheckReport, check_data

HYMENOPTERA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "hymenoptera"


def _image(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _clean_tree(root: Path) -> Path:
    seed = 0
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                seed += 1
                _image(seed).save(d / f"{cls}{i}.png")
    return root


def _found(report: CheckReport) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for f in report.errors + report.warnings:
        out.setdefault(f.kind, []).append(sorted(f.paths))
    return out


def test_clean_tree_is_ok(tmp_path):
    report = check_data(str(_clean_tree(tmp_path / "data")))
    assert report.ok
    assert report.errors == [] and report.warnings == []
    assert report.summary["classes_per_split"] == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 2, "dog": 2}}
    assert report.summary["imbalance_ratio"] == 1.0
    assert report.format_text().splitlines()[-1] == "0 errors, 0 warnings in 10 files"


def test_every_planted_fault_is_reported(tmp_path):
    root = _clean_tree(tmp_path / "data")
    train, val = root / "train", root / "val"
    (train / "cat" / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    _image(100, 64).save(buf, "JPEG")
    (train / "cat" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (train / "dog" / "text.jpg").write_text("not a picture\n")
    _image(101).save(train / "dog" / "png.jpg", "PNG")
    shutil.copy(train / "cat" / "cat0.png", val / "cat" / "leak.png")
    shutil.copy(train / "cat" / "cat1.png", train / "dog" / "cross.png")
    # Same pixels, different bytes: a re-encode with extra metadata is still the same image.
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "re-saved")
    Image.open(train / "dog" / "dog0.png").save(train / "dog" / "dog0-copy.png", pnginfo=meta)
    (train / "stray.jpg").write_bytes((train / "dog" / "dog1.png").read_bytes())
    (root / "README.txt").write_text("about this data\n")
    (train / "cat" / "notes.txt").write_text("labelled by hand\n")
    (train / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (train / "bird").mkdir()

    report = check_data(str(root))
    found = _found(report)
    assert not report.ok
    assert found["zero-byte"] == [["train/cat/zero.jpg"]]
    assert found["truncated"] == [["train/cat/cut.jpg"]]
    assert found["not-an-image"] == [["train/dog/text.jpg"]]
    assert found["extension-mismatch"] == [["train/dog/png.jpg"]]
    assert found["leak-across-splits"] == [["train/cat/cat0.png", "val/cat/leak.png"]]
    assert found["duplicate-across-labels"] == [["train/cat/cat1.png", "train/dog/cross.png"]]
    assert found["duplicate"] == [["train/dog/dog0-copy.png", "train/dog/dog0.png"]]
    assert sorted(found["stray-file"]) == [["README.txt"], ["train/stray.jpg"]]
    assert found["non-image-file"] == [["train/cat/notes.txt"]]
    assert found["empty-class"] == [["train/bird"], ["val/bird"]]
    assert "empty-class" in {f.kind for f in report.errors}  # train: an error
    assert [f.paths for f in report.warnings if f.kind == "empty-class"] == [["val/bird"]]  # val: a warning
    assert "truncated" in next(f.detail for f in report.errors if f.kind == "truncated")

    errors = {f.kind for f in report.errors}
    assert errors == {
        "zero-byte",
        "truncated",
        "not-an-image",
        "leak-across-splits",
        "duplicate-across-labels",
        "empty-class",
    }
    assert report.summary["hidden_files"] == 1
    assert report.summary["classes_per_split"]["train"] == {"bird": 0, "cat": 3, "dog": 6}

    text = report.format_text()
    assert "ERROR  zero-byte  train/cat/zero.jpg: zero-byte file" in text
    assert "WARN   extension-mismatch  train/dog/png.jpg: named .jpg but the file is PNG" in text
    assert text.splitlines()[-1] == f"{len(report.errors)} errors, {len(report.warnings)} warnings in 20 files"
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["data"] == str(root.resolve())


def test_class_folders_only_and_imbalance(tmp_path):
    root = tmp_path / "flat"
    for cls, n in (("many", 11), ("few", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _image(len(cls) * 100 + i, 8).save(root / cls / f"{i}.png")
    _image(999, 4).save(root / "few" / "tiny.png")
    report = check_data(str(root))
    assert report.ok and report.summary["layout"] == "classes"
    assert report.summary["imbalance_ratio"] == 5.5
    assert "class-imbalance" not in _found(report)
    assert _found(report)["tiny-image"] == [["few/tiny.png"]]
    (root / "few" / "tiny.png").unlink()
    assert _found(check_data(str(root)))["class-imbalance"] == [["few", "many"]]


def test_worker_pool_matches_serial(tmp_path, capsys):
    root = tmp_path / "pool"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(40):
            _image(i if cls == "a" else 1000 + i, 8).save(root / cls / f"{i}.png")
    (root / "b" / "0.png").write_bytes(b"")
    pooled = check_data(str(root), workers=2, progress=True)
    serial = check_data(str(root), workers=1)
    assert pooled.errors == serial.errors == [pooled.errors[0]]
    assert pooled.errors[0].kind == "zero-byte"
    assert pooled.summary["classes_per_split"] == serial.summary["classes_per_split"]
    assert "80/80" in capsys.readouterr().err


def test_csv_manifest(tmp_path):
    root = _clean_tree(tmp_path / "data")
    rows = [
        "path,label,split",
        "train/cat/cat0.png,cat,train",
        "train/dog/dog0.png,dog,train",
        "train/cat/cat0.png,cat,val",
        "val/dog/dog0.png,dog,val",
    ]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    report = check_data(str(root / "m.csv"))
    assert _found(report)["leak-across-splits"] == [["train/cat/cat0.png", "train/cat/cat0.png"]]
    assert report.summary["classes_per_split"] == {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "dog": 1}}


def test_bad_paths_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not found: pass a folder"):
        check_data(str(tmp_path / "nope"))
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        check_data(str(tmp_path / "a.jpg"))
    (tmp_path / "loose").mkdir()
    _image(1).save(tmp_path / "loose" / "1.png")
    with pytest.raises(DataError, match="no class folders"):
        check_data(str(tmp_path / "loose"))


def _head(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(4)


@pytest.mark.integration
def test_hymenoptera_has_no_errors():
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"reference data not found at {HYMENOPTERA}")
    report = check_data(str(HYMENOPTERA))
    assert report.ok, report.format_text()
    assert report.summary["classes_per_split"] == {"train": {"ants": 124, "bees": 121}, "val": {"ants": 70, "bees": 83}}
    # Which files are GIFs, from their magic bytes, independent of the checker: a GIF is a mismatch
    # exactly when its name says otherwise.
    gifs = sorted(
        p.relative_to(HYMENOPTERA).as_posix() for p in HYMENOPTERA.rglob("*") if p.is_file() and _head(p) == b"GIF8"
    )
    assert gifs, "expected the one GIF of the tutorial data"
    assert report.summary["formats"].get("GIF") == len(gifs)
    mismatched = sorted(p for f in report.warnings if f.kind == "extension-mismatch" for p in f.paths)
    assert mismatched == [g for g in gifs if not g.lower().endswith(".gif")]


def test_absurdly_shaped_image_is_an_error_like_training_says(tmp_path):
    # a 1 KB 400000 x 1 PNG: check called it fine, while training (load_image) leaves it out as bad-shape
    root = _clean_tree(tmp_path / "d")
    Image.new("RGB", (400000, 1)).save(root / "train" / "cat" / "strip.png")
    report = check_data(root, workers=1)
    found = _found(report)
    assert found.get("bad-shape") == [["train/cat/strip.png"]], found
    assert not report.ok
    (f,) = [f for f in report.errors if f.kind == "bad-shape"]
    assert "400,000 x 1" in f.detail and "100:1" in f.detail
