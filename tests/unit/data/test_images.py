"""Images whose shape resizing would blow up: a 1 KB PNG of 400000 x 1 pixels is under any
pixel limit, but resizing its shorter side to 256 px asks for ~78 GB. Every loader refuses it from the header,
with the reason, and keeps the other images; panoramas still work. (The server's side is in serve/test_app.py.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.images import MAX_ASPECT_RATIO, BadShape, UnreadableImage, check_shape, load_image, resize_shorter

ABSURD = [(400_000, 1), (1, 400_000)]


def _save(path: Path, size, fmt: str = "PNG") -> str:
    Image.new("RGB", size, (200, 40, 40)).save(path, fmt)
    return str(path)


def test_check_shape_bound():
    for w, h in [(1, 1), (MAX_ASPECT_RATIO, 1), (1, MAX_ASPECT_RATIO), (2560, 256), (256, 2560), (4000, 3000)]:
        check_shape(w, h, 256)
    for w, h in [(MAX_ASPECT_RATIO + 1, 1), (1, MAX_ASPECT_RATIO + 1), (400_000, 1), (0, 5)]:
        with pytest.raises(BadShape):
            check_shape(w, h, 256)
    with pytest.raises(BadShape) as e:
        check_shape(400_000, 1, 256)
    msg = str(e.value)
    assert "400,000 x 1 pixels" in msg and f"{MAX_ASPECT_RATIO}:1" in msg and "400,000:1" in msg
    assert "256 px would make it 102,400,000 x 256 pixels" in msg
    assert issubclass(BadShape, UnreadableImage)  # every caller that lists unreadable files lists these too


@pytest.mark.parametrize("size", ABSURD)
@pytest.mark.parametrize("resize", [None, 16, 256])
def test_load_image_refuses_absurd_shapes_from_the_header(tmp_path, size, resize):
    path = _save(tmp_path / "strip.png", size)
    assert Path(path).stat().st_size < 5_000  # a tiny file: the pixel count is not what makes it dangerous
    with pytest.raises(UnreadableImage, match=r"aspect ratio of 400,000:1, over the limit of 100:1"):
        load_image(path, resize=resize)


@pytest.mark.parametrize("size", ABSURD)
def test_resize_shorter_refuses_an_absurd_image_in_memory(size):
    with pytest.raises(BadShape, match="aspect ratio"):
        resize_shorter(Image.new("RGB", size), 256)


@pytest.mark.parametrize("size,fmt", [((2560, 256), "JPEG"), ((256, 2560), "PNG"), ((1000, 10), "PNG")])
def test_panoramas_still_load(tmp_path, size, fmt):
    """10:1 panoramas (and up to the 100:1 limit) are resized as before."""
    im = load_image(_save(tmp_path / f"pano.{fmt.lower()}", size, fmt), resize=64)
    assert min(im.size) == 64 and max(im.size) == 64 * max(size) // min(size)


def test_predictor_lists_the_absurd_image_and_keeps_the_others(tiny_best, tmp_path, image_of_class):
    from imgclf.infer.predict import Predictor

    good = tmp_path / "good.png"
    image_of_class(0, 16, rng=np.random.default_rng(0)).save(good)
    paths = [_save(tmp_path / "wide.png", (400_000, 1)), str(good), _save(tmp_path / "tall.png", (1, 400_000))]
    out = Predictor(tiny_best, device="cpu").predict(paths + [Image.new("RGB", (400_000, 1))])
    assert [r["path"] for r in out] == paths + [None]
    assert out[1]["label"] in ("cat", "dog", "fox")
    for r in out[:1] + out[2:]:
        assert "label" not in r and "aspect ratio" in r["error"], r


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_training_leaves_the_absurd_image_out_and_lists_it(tmp_path, make_folder, cache):
    from imgclf import train

    data = make_folder(tmp_path / "d", classes=("cat", "dog"), n=6, n_val=2)
    bad = _save(data / "train" / "cat" / "strip.png", (400_000, 1))
    res = train(
        data=str(data), model="test_tiny", epochs=1, out=str(tmp_path / "runs"), workers=0, batch_size=4, cache=cache
    )
    assert res["left_out"] == 1
    with open(Path(res["run_dir"]) / "left_out.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2 and rows[1][1] == bad and "aspect ratio" in rows[1][2], rows
