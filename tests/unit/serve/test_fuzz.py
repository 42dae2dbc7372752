"""Property-based fuzz of POST /predict (hypothesis), and hostile images sent to POST /explain: whatever a client sends, the answer is never a 5xx,
a refusal is JSON with an error code and a sentence, and a success has one prediction per image.

Requests are built from parts that are each sometimes right and sometimes wrong: the content type, the
multipart boundary, field names, file names, headers inside parts, top_k in the query and in the form, and
the file bytes: images generated in every format the server opens (PNG, JPEG, GIF, BMP, WEBP, TIFF, PPM), in
their modes (palette, grey, 1-bit, 16-bit, float, CMYK, LAB, alpha), of every shape from 1 x 1 to strips of
400000 x 1 and 1 x 400000, with several frames and with EXIF blocks; and those truncated, bit-flipped, random,
empty, or a decompression-bomb header. The tiny model is served behind an ImageNet model's preprocessing (shorter
side resized to 256 px), so that a shape is as dangerous here as it is in production.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from imgclf.infer.runtime import open_model
from imgclf.serve import ServeSettings, create_app

MAX_FILES = 6


def _img(fmt: str, size=(20, 14), mode="RGB") -> bytes:
    rng = np.random.default_rng(len(fmt))
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 32))
        + chunk(b"IEND", b"")
    )


def _png16(w: int, h: int, channels: int) -> bytes:
    """A 16-bit-per-channel RGB (3) or RGBA (4) PNG, which Pillow reads but cannot write."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, (h, w * channels), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)  # filter type 0 before each row
    color = {3: 2, 4: 6}[channels]
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _exif(size: int, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "x" * size  # ImageDescription: an EXIF block of `size` bytes
    return exif.tobytes()


def _frames(fmt: str, n: int, size=(24, 18)) -> bytes:
    """An animation of n distinct frames (equal frames would be merged by the encoder)."""
    frames = [Image.new("RGB", size, (40 * i % 256, 90, 200 - 20 * i % 200)) for i in range(n)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=20)
    return buf.getvalue()


def _strip(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


# Valid files a client may send that each once broke a decoder somewhere: the answer is 200 (or a 4xx for the
# strips), never a 5xx.
HOSTILE = {
    "strip-400000x1.png": _strip((400_000, 1)),
    "strip-1x400000.png": _strip((1, 400_000)),
    "cmyk.jpg": _img("JPEG", mode="CMYK"),
    "frames-200.gif": _frames("GIF", 200),
    "frames.png": _frames("PNG", 5),
    "frames.webp": _frames("WEBP", 5),
    "frames.tif": _frames("TIFF", 5),
    "rgb16.png": _png16(20, 14, 3),
    "rgba16.png": _png16(20, 14, 4),
    "grey16.png": _img("PNG", (9, 9), "I;16"),
    "float.tif": _img("TIFF", mode="F"),
    "lab.tif": _img("TIFF", mode="LAB"),
    "exif-60k-rotated.jpg": None,
    "exif-400k.png": None,
    "exif-400k.webp": None,
}
for name, kind, orientation in (
    ("exif-60k-rotated.jpg", "JPEG", 6),
    ("exif-400k.png", "PNG", 8),
    ("exif-400k.webp", "WEBP", 3),
):
    _buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(
        _buf, kind, exif=_exif(60_000 if kind == "JPEG" else 400_000, orientation)
    )
    HOSTILE[name] = _buf.getvalue()

VALID = [
    _img("PNG"),
    _img("JPEG"),
    _img("GIF", mode="P"),
    _img("BMP"),
    _img("PNG", (3, 300), "L"),
    _img("TIFF"),
    _img("WEBP"),
    _img("PNG", (1, 1), "RGBA"),
    _img("PNG", (9, 9), "I;16"),
] + list(HOSTILE.values())

# What each format can hold: its modes, its largest side (None: no limit below 400000), whether it animates.
MODES = {
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "JPEG": ["RGB", "L", "CMYK"],
    "GIF": ["P", "L"],
    "BMP": ["RGB", "L", "P", "1"],
    "WEBP": ["RGB", "RGBA"],
    "TIFF": ["RGB", "RGBA", "CMYK", "L", "I;16", "F", "LAB", "1", "YCbCr"],
    "PPM": ["RGB", "L", "1"],
}
MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383, "GIF": 65_535}
ANIMATES = ("PNG", "GIF", "WEBP", "TIFF")

shapes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),  # ordinary, 1 x 1 included
    st.tuples(st.integers(1, 4), st.integers(50, 400_000)),  # tall strips, around and far past the 100:1 limit
    st.tuples(st.integers(50, 400_000), st.integers(1, 4)),  # wide strips
    st.sampled_from([(400_000, 1), (1, 400_000), (100, 1), (101, 1), (1, 100), (2560, 256), (1000, 1000)]),
)


@st.composite
def generated_image(draw) -> bytes:
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    w, h = draw(shapes)
    cap = MAX_SIDE.get(fmt, w + h)
    w, h = min(w, cap), min(h, cap)
    if w * h <= 4096:  # noise for small images; a flat colour keeps large ones small on the wire and fast to make
        arr = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr, "RGB")
    else:
        im = Image.new("RGB", (w, h), draw(st.tuples(*[st.integers(0, 255)] * 3)))
    im = im.convert(mode)
    kw = {}
    if fmt in ANIMATES and draw(st.integers(0, 3)) == 0:
        kw = {
            "save_all": True,
            "append_images": [
                im.point(lambda v: 255 - v) if im.mode not in ("I;16", "F") else im.copy()
                for _ in range(draw(st.integers(1, 3)))
            ],
        }
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.integers(0, 3)) == 0:
        kw["exif"] = _exif(draw(st.sampled_from([0, 100, 20_000])), draw(st.integers(1, 8)))
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    event(f"image {fmt} {mode}" + (" strip" if max(w, h) > 100 * min(w, h) else ""))
    return buf.getvalue()


def sometimes(draw, good, bad, p_bad: int = 8):
    """`good` most of the time, one of `bad` about once in `p_bad` draws."""
    return draw(st.sampled_from(bad)) if draw(st.integers(0, p_bad - 1)) == 0 else good


@st.composite
def file_bytes(draw):
    base = draw(st.sampled_from(VALID) | generated_image())
    kind = sometimes(draw, "valid", ["truncated", "flipped", "random", "empty", "bomb", "prefix"], p_bad=3)
    if kind == "valid":
        return base
    if kind == "truncated":
        return base[: draw(st.integers(0, max(0, len(base) - 1)))]
    if kind == "flipped":
        b = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "bomb":
        return _bomb()
    if kind == "prefix":  # a real header followed by junk
        return base[:16] + draw(st.binary(max_size=64))
    return b""


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def part(draw):
    name = sometimes(draw, "image", ["top_k", "file", "", "imag", draw(text)], p_bad=12)
    as_file = name != "top_k" if draw(st.integers(0, 9)) else not (name != "top_k")
    if as_file:
        fname = draw(
            st.sampled_from(["a.png", "x.jpg", "", "../../etc/passwd", 'q"uote.png', "\u00e9t\u00e9.gif"]) | text
        )
        data = draw(file_bytes())
        ctype = draw(st.sampled_from(["image/png", "application/octet-stream", "", "text/plain"]))
        head = f'Content-Disposition: form-data; name="{name}"; filename="{fname}"'
    else:
        data = draw(st.sampled_from(["3", "1", "0", "-1", "x", "", "999999999999999999999", "1e3"]) | text).encode(
            "utf-8", "surrogatepass"
        )
        ctype = ""
        head = f'Content-Disposition: form-data; name="{name}"'
    head = sometimes(
        draw,
        head,
        [
            "Content-Disposition: form-data",
            "Content-Disposition: attachment",
            "X-Nothing: 1",
            "",
            head.replace("form-data; ", ""),
        ],
        p_bad=25,
    )
    lines = head + (f"\r\nContent-Type: {ctype}" if ctype else "")
    return lines.encode("utf-8", "surrogatepass"), data


@st.composite
def request(draw):
    boundary = sometimes(draw, "fuzzboundary", ["a", "x" * 70, "=?%", "--", "b" * 200], p_bad=6)
    n = sometimes(draw, draw(st.integers(1, 3)), [0, MAX_FILES, MAX_FILES + 1, MAX_FILES + 2], p_bad=10)
    parts = [draw(part()) for _ in range(n)]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + h + b"\r\n\r\n" + d + b"\r\n" for h, d in parts)
    ending = sometimes(draw, "close", ["missing", "junk"], p_bad=10)
    if ending == "close":
        body += b"--" + boundary.encode() + b"--\r\n"
    elif ending == "junk":
        body += draw(st.binary(max_size=40))
    ctype = sometimes(
        draw,
        f"multipart/form-data; boundary={boundary}",
        [
            "multipart/form-data",
            f'multipart/form-data; boundary="{boundary}"; charset=latin-1',
            "application/json",
            "text/plain",
            "",
            "multipart/mixed; boundary=x",
            "multipart/form-data; boundary=",
            f"MULTIPART/FORM-DATA; BOUNDARY={boundary}",
        ],
        p_bad=8,
    )
    query = sometimes(draw, None, ["3", "0", "abc", "1" * 30, "-5", "", "2.5", "1"], p_bad=6)
    return ctype, body, query


class ImageNetPreprocess:
    """The tiny model behind an ImageNet model's preprocessing: shorter side resized to 256 px, then the model's own
    centre crop (16 px). Without it, a 400000 x 1 strip asks for 16 x 6,400,000 pixels, which is merely slow."""

    def __init__(self, runner):
        for k in ("path", "format", "model_name", "classes", "config", "extra"):
            setattr(self, k, getattr(runner, k))
        self.inner, self.preprocess = runner, dataclasses.replace(runner.preprocess, resize=256)

    def metadata(self):
        return self.inner.metadata()

    def logits(self, x):
        return self.inner.logits(x)


@pytest.fixture(scope="module")
def client(tiny_best):
    app = create_app(
        ImageNetPreprocess(open_model(tiny_best, device="cpu")),
        ServeSettings(max_files=MAX_FILES, max_upload_mb=2, max_pixels=1_000_000, max_wait_ms=1),
    )
    with TestClient(app, raise_server_exceptions=True) as c:  # a server-side exception fails the test
        t0 = time.time()
        while c.get("/ready").status_code != 200:
            assert time.time() - t0 < 60
            time.sleep(0.02)
        yield c


def _well_formed(files: list[tuple[str, bytes]], boundary: str = "fuzzboundary"):
    """A (content type, body, query) request that is right in every part, for explicit examples."""
    body = b"".join(
        b"--"
        + boundary.encode()
        + f'\r\nContent-Disposition: form-data; name="image"; filename="{n}"'.encode()
        + b"\r\n\r\n"
        + d
        + b"\r\n"
        for n, d in files
    )
    return f"multipart/form-data; boundary={boundary}", body + b"--" + boundary.encode() + b"--\r\n", None


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_but_valid_images(client, name):
    """Each file alone in a well-formed request: a 200, or a 4xx for a strip past the aspect-ratio limit."""
    ctype, body, _ = _well_formed([(name, HOSTILE[name])])
    r = client.post("/predict", content=body, headers={"content-type": ctype})
    if name.startswith("strip-"):
        assert r.status_code == 422 and r.json()["error"] == "bad_shape", r.text
    else:
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in ("cat", "dog", "fox")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_explain_takes_hostile_images_without_a_5xx(client, name):
    """/explain decodes the whole image (the overlay is drawn on it) with the same checks: a PNG, or the same
    JSON 4xx as /predict."""
    ctype, body, _ = _well_formed([(name, HOSTILE[name])])
    r = client.post("/explain", content=body, headers={"content-type": ctype})
    if name.startswith("strip-"):
        assert r.status_code == 422 and r.json()["error"] == "bad_shape", r.text
    else:
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        with Image.open(io.BytesIO(r.content)) as im:
            assert max(im.size) <= 1024


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(req=request())
@example(req=_well_formed([("strip-400000x1.png", HOSTILE["strip-400000x1.png"])]))
@example(req=_well_formed([("strip-1x400000.png", HOSTILE["strip-1x400000.png"]), ("cmyk.jpg", HOSTILE["cmyk.jpg"])]))
def test_predict_never_answers_5xx(client, req):
    ctype, body, query = req
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/predict", content=body, headers=headers, params={"top_k": query} if query is not None else None)
    assert r.status_code < 500, (r.status_code, r.text)
    payload = r.json()
    event(f"{r.status_code} {payload.get('error', '')}")  # pytest --hypothesis-show-statistics
    if r.status_code == 200:
        preds = payload["predictions"]
        assert 1 <= len(preds) <= MAX_FILES
        for p in preds:
            assert p["label"] in ("cat", "dog", "fox") and 0.0 <= p["probability"] <= 1.0
    else:
        assert 400 <= r.status_code < 500
        assert isinstance(payload["error"], str) and isinstance(payload["detail"], str) and payload["detail"]
