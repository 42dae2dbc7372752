"""benchmarks/make_mosaics.py on synthetic 8 px tiles: labels are the distinct classes of the tiles, every source
used at most once (train and val together, test from test sources only), and the same seed gives the same bytes."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_mosaics.py"
CLASSES = ["a", "b", "c", "d", "e"]
COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255)}


def _module():
    spec = importlib.util.spec_from_file_location("make_mosaics", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _root(tmp: Path) -> Path:
    for split, n in (("train", 12), ("test", 6)):
        for c in CLASSES:
            (tmp / "src" / split / c).mkdir(parents=True)
            for i in range(n):  # a flat colour per class (PNG pixels cut back out must match it)
                Image.new("RGB", (8, 8), COLOURS[c]).save(tmp / "src" / split / c / f"{i:03d}.jpg", quality=100)
    return tmp / "src"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mosaics_labels_sources_and_determinism(tmp_path):
    mod, root = _module(), _root(tmp_path)
    sizes = {"train": 8, "val": 3, "test": 5}
    mod.make(root, tmp_path / "m1", sizes, seed=3, tile=8)
    mod.make(root, tmp_path / "m2", sizes, seed=3, tile=8)
    mosaics, tiles = _rows(tmp_path / "m1" / "mosaics.csv"), _rows(tmp_path / "m1" / "tiles.csv")
    assert [sum(r["split"] == s for r in mosaics) for s in sizes] == list(sizes.values())
    assert len(tiles) == 4 * len(mosaics)
    by_mosaic: dict[str, list[dict]] = {}
    for t in tiles:
        by_mosaic.setdefault(t["mosaic"], []).append(t)
    for m in mosaics:
        ts = sorted(by_mosaic[m["path"]], key=lambda t: int(t["position"]))
        assert [int(t["position"]) for t in ts] == [0, 1, 2, 3]
        assert m["labels"].split("|") == sorted({t["label"] for t in ts})  # distinct, in class order
        assert all(f"/{'test' if m['split'] == 'test' else 'train'}/{t['label']}/" in t["path"] for t in ts)
        img = np.asarray(Image.open(tmp_path / "m1" / m["path"]))
        assert img.shape == (16, 16, 3)
        for t in ts:  # each tile holds its class's colour where the manifest says
            p = int(t["position"])
            patch = img[(p // 2) * 8 : (p // 2) * 8 + 8, (p % 2) * 8 : (p % 2) * 8 + 8].reshape(-1, 3).mean(0)
            assert np.abs(patch - COLOURS[t["label"]]).max() < 8
    train_val = [t["path"] for t in tiles if t["split"] != "test"]
    test = [t["path"] for t in tiles if t["split"] == "test"]
    assert len(set(train_val)) == len(train_val) and len(set(test)) == len(test)
    for name in ["mosaics.csv", "tiles.csv"] + [m["path"] for m in mosaics]:
        assert (tmp_path / "m1" / name).read_bytes() == (tmp_path / "m2" / name).read_bytes()


def test_too_many_mosaics_is_one_line(tmp_path):
    mod, root = _module(), _root(tmp_path)
    with pytest.raises(SystemExit, match="need 80 tiles but there are only 60"):
        mod.make(root, tmp_path / "m", {"train": 20, "val": 0, "test": 1}, tile=8)  # 80 tiles from 60 sources
