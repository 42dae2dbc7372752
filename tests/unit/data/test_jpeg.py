"""data/jpeg.py: JPEGs decoded by libjpeg-turbo (simplejpeg) give Pillow's size and pixels, upright, with the
header checks before decoding, and every file it does not take goes to Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgclf.data import images, jpeg
from imgclf.data.images import TooManyPixels, UnreadableImage, decode_image, draft_for, load_image, pixel_limit

pytestmark = pytest.mark.skipif(not jpeg.available(), reason="simplejpeg is not installed (pip install simplejpeg)")


def _photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradients and noise: chroma detail that upsampling and scaled IDCTs would change if they differed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256], axis=-1).astype(np.int16)
    a = np.clip(a + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    return im.convert(mode) if mode != "RGB" else im


def _jpeg(path: Path, im: Image.Image, **save) -> str:
    im.save(path, "JPEG", **{"quality": 90, **save})
    return str(path)


def _both(path: str, resize: int | None, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """(the image through libjpeg-turbo, the image through Pillow alone) as arrays."""
    fast = np.asarray(load_image(path, resize=resize))
    with monkeypatch.context() as m:
        m.setattr(jpeg, "simplejpeg", None)
        slow = np.asarray(load_image(path, resize=resize))
    return fast, slow


def _decoded_by_turbo(monkeypatch) -> list:
    calls = []
    real = jpeg.decode
    monkeypatch.setattr(jpeg, "decode", lambda *a: calls.append(a) or real(*a))
    return calls


@pytest.mark.parametrize(
    "size, save, resize",
    [
        ((640, 480), {}, None),  # full size, 4:2:0
        ((640, 480), {}, 256),  # 1/1: 480 // 256 rounds down to 1
        ((1400, 1050), {"subsampling": 0}, 256),  # 4:4:4, 1/4
        ((2001, 1501), {"progressive": True}, 256),  # progressive, odd sides, 1/4 (sides rounded up)
        ((2100, 1300), {"subsampling": 1}, 160),  # 4:2:2, 1/8
        ((33, 31), {}, 256),  # smaller than the resize: enlarged, decoded at full size
    ],
)
def test_same_size_and_pixels_as_pillow(tmp_path, monkeypatch, size, save, resize):
    path = _jpeg(tmp_path / "a.jpg", _photo(*size), **save)
    calls = _decoded_by_turbo(monkeypatch)
    fast, slow = _both(path, resize, monkeypatch)
    assert len(calls) == 1  # the first decode went through libjpeg-turbo, the second did not
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow)


def test_grey_jpeg_becomes_the_same_rgb(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "g.jpg", _photo(300, 200, "L"))
    fast, slow = _both(path, 100, monkeypatch)
    assert fast.shape == slow.shape == (100, 150, 3)
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("w, h, resize", [(4000, 3000, 256), (500, 375, 256), (2000, 100, 64), (640, 480, 60)])
def test_draft_scale_is_pillows(tmp_path, w, h, resize):
    with Image.open(_jpeg(tmp_path / "s.jpg", Image.new("RGB", (w, h)))) as im:
        draft_for(im, resize)
        f = jpeg.draft_scale(w, h, resize)
        assert im.size == (-(-w // f), -(-h // f))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow(tmp_path, monkeypatch, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _jpeg(tmp_path / "o.jpg", _photo(96, 64), exif=exif)
    with open(path, "rb") as f:
        assert jpeg.read_header(f.read()).orientation == orientation
    fast, slow = _both(path, None, monkeypatch)
    assert np.array_equal(fast, slow)
    with Image.open(path) as im:
        assert np.array_equal(fast, np.asarray(ImageOps.exif_transpose(im)))


def test_big_endian_exif_orientation():
    body = b"MM\x00*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big")
    body += (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + (6).to_bytes(2, "big")
    body += b"\x00\x00" + b"\x00\x00\x00\x00"
    segment = b"Exif\x00\x00" + body
    data = b"\xff\xd8" + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + b"\xff\xda\x00\x02"
    assert jpeg._orientation(data) == 6


def test_orientation_only_in_xmp_goes_to_pillow(tmp_path):
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    path = _jpeg(tmp_path / "x.jpg", _photo(64, 48), xmp=xmp)
    data = Path(path).read_bytes()
    assert jpeg.read_header(data) is None  # Pillow reads XMP's orientation; this path leaves it to Pillow
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(np.asarray(load_image(path)), expected)


def test_cmyk_png_and_absent_simplejpeg_go_to_pillow(tmp_path, monkeypatch):
    cmyk = _jpeg(tmp_path / "c.jpg", _photo(64, 48, "CMYK"))
    png = tmp_path / "p.png"
    _photo(64, 48).save(png)
    assert jpeg.read_header(Path(cmyk).read_bytes()) is None
    calls = _decoded_by_turbo(monkeypatch)
    with Image.open(cmyk) as im:
        assert np.array_equal(np.asarray(load_image(cmyk)), np.asarray(im.convert("RGB")))
    assert load_image(str(png)).size == (64, 48)
    assert calls == []
    monkeypatch.setattr(jpeg, "simplejpeg", None)
    assert not jpeg.available() and jpeg.read_header(Path(cmyk).read_bytes()) is None


def test_truncated_and_corrupt_jpegs_fail_as_with_pillow(tmp_path, monkeypatch):
    whole = Path(_jpeg(tmp_path / "w.jpg", _photo(200, 150)))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(UnreadableImage) as fast:
        load_image(str(cut))
    monkeypatch.setattr(jpeg, "simplejpeg", None)
    with pytest.raises(UnreadableImage) as slow:
        load_image(str(cut))
    assert "truncated" in str(fast.value) and str(fast.value) == str(slow.value)


def test_pixel_limit_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "big.jpg", _photo(400, 300))
    monkeypatch.setattr(jpeg, "decode", lambda *a: pytest.fail("decoded an image over the limit"))
    with pixel_limit(1000), pytest.raises(TooManyPixels):
        load_image(path, resize=64)


def test_bytes_and_path_decode_alike(tmp_path):
    path = _jpeg(tmp_path / "b.jpg", _photo(900, 600))
    data = Path(path).read_bytes()
    seen = []
    a = decode_image(data, 128, check=lambda w, h: seen.append((w, h)))
    b = decode_image(path, 128, check=lambda w, h: seen.append((w, h)))
    assert seen == [(900, 600), (900, 600)]
    assert a.size == b.size == (225, 150) and np.array_equal(np.asarray(a), np.asarray(b))


def test_the_decoded_image_is_rgb_and_writable_through_pillow(tmp_path):
    im = images.decode_image(_jpeg(tmp_path / "r.jpg", _photo(50, 40)), None, check=lambda w, h: None)
    assert im.mode == "RGB"
    im.putpixel((0, 0), (1, 2, 3))  # an image wrapping simplejpeg's array still takes writes
    assert im.getpixel((0, 0)) == (1, 2, 3)
    buf = io.BytesIO()
    im.save(buf, "PNG")
