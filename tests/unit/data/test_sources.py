"""Data sources (`imgclf.data.sources.open_source`), the CIFAR readers and image decoding, on synthetic data only."""

from __future__ import annotations

import csv
import io
import os
import pickle
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.core.errors import DataError, UsageError
from imgclf.data.images import UnreadableImage, load_image
from imgclf.data.sources import DataSource, open_source, write_split_manifest


def _class_of(path: str) -> str:
    return Path(path).parent.name


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, f"expected a one-line message, got {msg!r}"
    return msg


# ----------------------------------------------------------------------------------------------- split layout


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_layout_val_aliases(tmp_path, make_folder, val_name):
    root = make_folder(tmp_path / "d", classes=("dog", "cat"), n=6, n_val=3, val_name=val_name)
    src = open_source(str(root))
    assert src.kind == "folder"
    assert set(src.splits) == {"train", "val"}
    assert src.val_origin == "folder"
    assert src.classes == ["cat", "dog"]
    assert len(src.split("train")) == 12 and len(src.split("val")) == 6
    for p in src.split("val").paths:
        assert Path(p).parent.parent.name == val_name
    for name in ("train", "val"):
        s = src.split(name)
        assert [src.classes[y] for y in s.labels] == [_class_of(p) for p in s.paths]


def test_split_layout_with_test(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", classes=("a", "b"), n=4, n_val=2, n_test=3)
    src = open_source(str(root))
    assert set(src.splits) == {"train", "val", "test"}
    test = src.split("test")
    assert len(test) == 6
    assert all(Path(p).parent.parent.name == "test" for p in test.paths)
    assert [src.classes[y] for y in test.labels] == [_class_of(p) for p in test.paths]


def test_class_indices_sorted_and_shared_across_splits(tmp_path, make_folder):
    # val lacks 'mouse': its labels must still use the index from the sorted union of class names.
    root = make_folder(tmp_path / "d", classes=("zebra", "ant", "mouse"), n=4, n_val=2, val_classes=("zebra", "ant"))
    src = open_source(str(root))
    assert src.classes == ["ant", "mouse", "zebra"]
    val = src.split("val")
    assert sorted(set(val.labels)) == [0, 2]  # ant=0, zebra=2; not re-indexed to 0, 1
    for name in ("train", "val"):
        s = src.split(name)
        assert [src.classes[y] for y in s.labels] == [_class_of(p) for p in s.paths]


# ----------------------------------------------------------------------------------------------- flat layout


def test_flat_layout_stratified_seeded_split(tmp_path, make_folder):
    root = make_folder(tmp_path / "flat", layout="flat", classes=("a", "b", "c"), n=12)
    src = open_source(str(root), val_fraction=0.25, seed=0)
    assert src.val_origin == "carved"
    assert set(src.splits) == {"train", "val"}
    train, val = src.split("train"), src.split("val")
    assert len(train) + len(val) == 36 and len(val) == 9
    # stratified: 3 of each class's 12 images held out
    assert np.bincount(val.labels, minlength=3).tolist() == [3, 3, 3]
    assert np.bincount(train.labels, minlength=3).tolist() == [9, 9, 9]
    assert not set(train.paths) & set(val.paths)
    all_files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert sorted(train.paths + val.paths) == all_files
    for s in (train, val):
        assert [src.classes[y] for y in s.labels] == [_class_of(p) for p in s.paths]

    again = open_source(str(root), val_fraction=0.25, seed=0)
    assert again.split("val").paths == val.paths and again.split("train").paths == train.paths
    other = open_source(str(root), val_fraction=0.25, seed=1)
    assert set(other.split("val").paths) != set(val.paths)
    assert np.bincount(other.split("val").labels, minlength=3).tolist() == [3, 3, 3]


# ----------------------------------------------------------------------------------------------- CSV


def _csv_images(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Images under tmp/data/imgs, returned as (path relative to tmp/data, label)."""
    base = tmp_path / "data"
    rng = np.random.default_rng(0)
    rows = []
    for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        d = base / "imgs" / label
        d.mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.asarray(colour) + rng.normal(0, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
            rows.append((f"imgs/{label}/{i}.png", label))
    return base, rows


def test_csv_with_split_column_paths_relative_to_csv(tmp_path, monkeypatch):
    base, rows = _csv_images(tmp_path)
    lines = ["path,label,split"]
    for j, (p, label) in enumerate(rows):
        lines.append(f"{p},{label},{'val' if j % 3 == 0 else 'train'}")
    (base / "manifest.csv").write_text("\n".join(lines) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths resolve against the CSV's folder, not the working directory

    src = open_source(str(base / "manifest.csv"))
    assert src.kind == "csv"
    assert src.classes == ["blue", "red"]
    assert set(src.splits) == {"train", "val"} and src.val_origin == "folder"
    assert len(src.split("val")) == 4 and len(src.split("train")) == 8
    for s in src.splits.values():
        for p, y in zip(s.paths, s.labels):
            assert os.path.isabs(p) and os.path.isfile(p), p
            assert Path(p).resolve().is_relative_to((base / "imgs").resolve())
            assert src.classes[y] == _class_of(p)


def test_csv_without_split_column_carves_val(tmp_path):
    base, rows = _csv_images(tmp_path)
    (base / "m.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    src = open_source(str(base / "m.csv"), val_fraction=0.5, seed=3)
    assert src.val_origin == "carved"
    assert len(src.split("train")) == 6 and len(src.split("val")) == 6
    assert np.bincount(src.split("val").labels).tolist() == [3, 3]
    for s in src.splits.values():
        assert all(os.path.isfile(p) for p in s.paths)
        assert [src.classes[y] for y in s.labels] == [_class_of(p) for p in s.paths]


# ----------------------------------------------------------------------------------------------- errors


def test_missing_folder_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as ei:
        open_source(str(tmp_path / "nope"))
    assert isinstance(ei.value, UsageError)
    assert "nope" in _one_line(ei.value)


def test_misspelled_builtin_suggests_digits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no folder named 'digit' can exist here
    with pytest.raises(DataError) as ei:
        open_source("digit")
    assert "did you mean 'digits'" in _one_line(ei.value)


def test_empty_class_is_a_data_error(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", classes=("cat", "dog"), n=4)
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError) as ei:
        open_source(str(root))
    msg = _one_line(ei.value)
    assert "'dog'" in msg and "no images" in msg


def test_csv_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(DataError) as ei:
        open_source(str(tmp_path / "m.csv"))
    msg = _one_line(ei.value)
    assert "path,label" in msg and "file" in msg


def test_unknown_split_name_suggests(tmp_path, make_folder):
    src = open_source(str(make_folder(tmp_path / "d", n=4, n_test=2)))
    with pytest.raises(DataError) as ei:
        src.split("tset")
    msg = _one_line(ei.value)
    assert "'tset'" in msg and "did you mean 'test'" in msg
    assert "train" in msg and "val" in msg  # lists what there is


# ----------------------------------------------------------------------------------------------- digits


def test_digits():
    src = open_source("digits")
    assert src.kind == "digits"
    assert src.classes == [str(i) for i in range(10)]
    train, val = src.split("train"), src.split("val")
    assert len(train) + len(val) == 1797
    for s in (train, val):
        assert s.arrays.shape[1:] == (8, 8, 3) and s.arrays.dtype == np.uint8
        assert len(s.arrays) == len(s.labels) == len(s.ids)
    assert set(train.labels) == set(range(10))
    all_ids = sorted(train.ids + val.ids, key=lambda x: int(x.split(":")[1]))
    assert all_ids == [f"digits:{i}" for i in range(1797)]


# ----------------------------------------------------------------------------------------------- CIFAR


def _pixel_planes(n: int, rng) -> np.ndarray:
    """n x 3072 uint8 rows in CIFAR's layout: 1024 R values (row-major 32x32), then G, then B."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _plant(row: np.ndarray) -> None:
    """Known values: R at (y=1, x=2), G at (y=3, x=4), B at (y=5, x=6)."""
    row[0 * 1024 + 1 * 32 + 2] = 201
    row[1 * 1024 + 3 * 32 + 4] = 102
    row[2 * 1024 + 5 * 32 + 6] = 53


def _check_planted(img: np.ndarray) -> None:
    assert img.shape == (32, 32, 3)  # HWC
    assert img[1, 2, 0] == 201 and img[3, 4, 1] == 102 and img[5, 6, 2] == 53


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root: Path, per_batch: int = 4, n_test: int = 5):
    """The real CIFAR-10 python format, tiny. Returns {id: (label, pixel row)} for every image."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(10)
    truth = {}
    k = 0
    for b in range(1, 6):
        data = _pixel_planes(per_batch, rng)
        if b == 1:
            _plant(data[0])
        labels = [(k + i) % 10 for i in range(per_batch)]
        for i in range(per_batch):
            truth[f"cifar10:train:{k + i}"] = (labels[i], data[i].copy())
        k += per_batch
        _dump(
            {
                "batch_label": f"training batch {b} of 5",
                "data": data,
                "labels": labels,
                "filenames": [f"img{i}.png" for i in range(per_batch)],
            },
            folder / f"data_batch_{b}",
        )
    data = _pixel_planes(n_test, rng)
    _plant(data[2])
    labels = [(i * 3) % 10 for i in range(n_test)]
    for i in range(n_test):
        truth[f"cifar10:test:{i}"] = (labels[i], data[i].copy())
    _dump({"batch_label": "testing batch 1 of 1", "data": data, "labels": labels}, folder / "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, folder / "batches.meta")
    return truth, names


def _by_id(src: DataSource) -> dict[str, tuple[int, np.ndarray]]:
    out = {}
    for s in src.splits.values():
        assert s.arrays is not None and s.arrays.dtype == np.uint8
        assert len(s.arrays) == len(s.labels) == len(s.ids)
        for i, name in enumerate(s.ids):
            out[name] = (s.labels[i], s.arrays[i])
    return out


def _expected_hwc(row: np.ndarray) -> np.ndarray:
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


def test_cifar10_reader_from_files(tmp_path):
    truth, names = _write_cifar10(tmp_path)
    src = open_source("cifar10", data_root=str(tmp_path), download=False, val_fraction=0.5)
    assert src.kind == "cifar10"
    assert src.classes == names
    assert set(src.splits) == {"train", "val", "test"}
    assert len(src.split("train")) + len(src.split("val")) == 20
    assert len(src.split("test")) == 5
    got = _by_id(src)
    assert set(got) == set(truth)
    for name, (label, row) in truth.items():
        assert got[name][0] == label, name
        np.testing.assert_array_equal(got[name][1], _expected_hwc(row))
    _check_planted(got["cifar10:train:0"][1])
    _check_planted(got["cifar10:test:2"][1])


def test_cifar100_reader_from_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(100)
    n_train, n_test = 200, 7
    train = _pixel_planes(n_train, rng)
    _plant(train[5])
    fine = [i % 100 for i in range(n_train)]
    _dump(
        {
            "filenames": [],
            "batch_label": "training batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": train,
        },
        folder / "train",
    )
    test = _pixel_planes(n_test, rng)
    test_fine = [99 - i for i in range(n_test)]
    _dump({"fine_labels": test_fine, "coarse_labels": [f // 5 for f in test_fine], "data": test}, folder / "test")
    names = [f"class{i:02d}" for i in range(100)]
    _dump({"fine_label_names": names, "coarse_label_names": [f"super{i}" for i in range(20)]}, folder / "meta")

    src = open_source("cifar100", data_root=str(tmp_path), download=False, val_fraction=0.5)
    assert src.kind == "cifar100" and src.classes == names
    assert len(src.split("train")) + len(src.split("val")) == n_train
    got = _by_id(src)
    for i in range(n_train):
        label, img = got[f"cifar100:train:{i}"]
        assert label == fine[i]
        np.testing.assert_array_equal(img, _expected_hwc(train[i]))
    for i in range(n_test):
        assert got[f"cifar100:test:{i}"][0] == test_fine[i]
    _check_planted(got["cifar100:train:5"][1])


def test_cifar_absent_offline_names_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as ei:
        open_source("cifar10", data_root=str(empty), download=False)
    assert os.path.join(str(empty), "cifar-10-batches-py") in _one_line(ei.value)
    assert not (empty / "cifar-10-batches-py").exists()


def test_cifar_download_fails_offline(tmp_path, monkeypatch):
    """Offline: one line naming the folder, and the time limit goes to the download itself, never through the
    process's socket default (which another thread of the caller may rely on)."""
    calls = []

    def offline(request, *args, timeout=None, **kwargs):
        calls.append((getattr(request, "full_url", request), timeout, socket.getdefaulttimeout()))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    timeout_before = socket.getdefaulttimeout()
    root = tmp_path / "root"
    with pytest.raises(DataError) as ei:
        open_source("cifar10", data_root=str(root), download=True)
    assert calls, "the download was never attempted"
    msg = _one_line(ei.value)
    assert os.path.join(str(root), "cifar-10-batches-py") in msg
    assert "offline" in msg
    # raised `from None`: the CLI shows one line, and there is no chained network traceback to show
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert socket.getdefaulttimeout() == timeout_before
    url, timeout, default_during = calls[0]
    assert url.endswith("cifar-10-python.tar.gz") and timeout and timeout > 0
    assert default_during == timeout_before  # the process-wide default was never changed, not even meanwhile


def _cifar_archive(tmp_path) -> tuple[bytes, dict]:
    """A tiny CIFAR-10 in the layout of the real download (cifar-10-python.tar.gz), and its truth."""
    import tarfile

    src = tmp_path / "made"
    truth, _ = _write_cifar10(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buf.getvalue(), truth


def _serve(monkeypatch, body: bytes) -> list:
    calls = []

    def urlopen(request, *args, timeout=None, **kwargs):
        calls.append(timeout)
        return io.BytesIO(body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_cifar_download_checks_the_md5_then_extracts(tmp_path, monkeypatch):
    import hashlib

    from imgclf.data.cifar import reader

    body, truth = _cifar_archive(tmp_path)
    monkeypatch.setattr(reader("cifar10"), "tgz_md5", hashlib.md5(body).hexdigest())
    calls = _serve(monkeypatch, body)
    root = tmp_path / "root"
    src = open_source("cifar10", data_root=str(root), download=True, val_fraction=0.5)
    assert len(calls) == 1 and calls[0] > 0
    assert set(_by_id(src)) == set(truth)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temporary file


def test_cifar_damaged_download_is_refused_and_removed(tmp_path, monkeypatch):
    body, _ = _cifar_archive(tmp_path)
    _serve(monkeypatch, body[: len(body) // 2])  # the MD5 torchvision records is the real file's: this is not it
    root = tmp_path / "root"
    with pytest.raises(DataError) as ei:
        open_source("cifar10", data_root=str(root), download=True)
    msg = _one_line(ei.value)
    assert "could not be downloaded" in msg and "damaged" in msg
    assert os.listdir(root) == []


# ----------------------------------------------------------------------------------------------- image modes


def _rgb_array(w=20, h=10):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 200
    a[..., 1] = 30
    a[..., 2] = 90
    return a


def test_palette_image_becomes_rgb(tmp_path):
    im = Image.fromarray(_rgb_array()).quantize(4)
    assert im.mode == "P"
    im.save(tmp_path / "p.png")
    out = load_image(str(tmp_path / "p.png"))
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((3, 3)) == (200, 30, 90)


def test_grayscale_becomes_rgb(tmp_path):
    Image.fromarray(np.full((10, 20), 77, np.uint8), "L").save(tmp_path / "g.png")
    out = load_image(str(tmp_path / "g.png"))
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((0, 0)) == (77, 77, 77)


def test_rgba_becomes_rgb(tmp_path):
    a = np.dstack([_rgb_array(), np.full((10, 20), 128, np.uint8)])
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = load_image(str(tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((1, 1)) == (200, 30, 90)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(str(tmp_path / "c.jpg"))
    assert out.mode == "RGB" and out.size == (20, 10)
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # pure cyan-free magenta+yellow is red


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.zeros((10, 30), np.uint16)
    a[:, 10:20] = 32768
    a[:, 20:] = 65535
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(str(tmp_path / "g16.png"))
    assert out.mode == "RGB" and out.size == (30, 10)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((29, 0)) == (255, 255, 255)
    mid = out.getpixel((15, 0))
    assert mid[0] == mid[1] == mid[2] and 120 <= mid[0] <= 135  # half scale, not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 tall
    a[:8, :8] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(str(tmp_path / "o.jpg"))
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # after a clockwise quarter turn the stored top-left lands at the top-right
    r, g, b = out.getpixel((20 - 3, 3))
    assert r > 200 and g < 60 and b < 60
    assert out.getpixel((3, 3))[0] < 60


def test_truncated_jpeg_is_unreadable(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(str(tmp_path / "cut.jpg"))


def test_text_named_jpg_is_unreadable(tmp_path):
    (tmp_path / "t.jpg").write_text("this is not a picture\n")
    with pytest.raises(UnreadableImage, match="not an image"):
        load_image(str(tmp_path / "t.jpg"))


def test_zero_byte_is_unreadable(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(UnreadableImage, match="zero-byte"):
        load_image(str(tmp_path / "z.png"))


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize(
    "size, resize, expected",
    [((40, 20), 10, (20, 10)), ((20, 40), 10, (10, 20)), ((300, 200), 32, None), ((16, 16), 16, (16, 16))],
)
def test_resize_makes_shorter_side(tmp_path, fmt, size, resize, expected):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"x.{fmt}")
    out = load_image(str(tmp_path / f"x.{fmt}"), resize=resize)
    assert min(out.size) == resize
    assert (out.size[0] >= out.size[1]) == (size[0] >= size[1])  # orientation kept
    if expected is not None:
        assert out.size == expected
    else:
        assert abs(out.size[0] / out.size[1] - size[0] / size[1]) < 0.05


def test_data_modules_do_not_import_each_other_in_a_cycle():
    """data/cifar.py reads, data/sources.py assembles: imports between the data modules form no cycle (module
    level or inside functions)."""
    import ast

    import imgclf.data

    folder = Path(imgclf.data.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
        graph[f.stem] = deps

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m)] == []


def test_split_manifest_neutralises_formula_cells_and_a_manifest_reads_them_back(tmp_path):
    """Issue 22, defect 12: split.csv (and every CSV imgclf writes from names) writes a class or file name that
    starts with = + - @ with a quote in front, so a spreadsheet shows it as text; a class named -1 stays a
    number; the CSV reads back (as a manifest) with the names as they were."""
    names = {"=HYPERLINK(1)": "=a.png", "-1": "-b.png", "@cmd": "c.png"}
    for name in names.values():
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(tmp_path / f"{i}{name}")
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for label, name in names.items():
            w.writerow([f"0{name}", label, "train"])
            w.writerow([f"1{name}", label, "val"])
    src = open_source(str(manifest))
    assert src.classes == sorted(names)
    out = tmp_path / "split.csv"
    write_split_manifest(src, str(out))
    with open(out, newline="", encoding="utf-8") as f:
        cells = list(csv.reader(f))
    labels = {row[1] for row in cells[1:]}
    assert labels == {"'=HYPERLINK(1)", "-1", "'@cmd"}, labels
    again = open_source(str(out))  # split.csv is a manifest: the names come back as they were
    assert again.classes == src.classes
    assert sorted(again.splits["train"].paths) == sorted(src.splits["train"].paths)
