"""Property-based fuzz of POST /predict (hypothesis): whatever a client sends, the answer is never a 5xx,
a refusal is JSON with an error code and a sentence, and a success has one prediction per image.

Requests are built from parts that are each sometimes right and sometimes wrong: the content type, the
multipart boundary, field names, file names, headers inside parts, top_k in the query and in the form, and
the file bytes (valid PNG/JPEG/GIF, truncated, bit-flipped, random, empty, a decompression-bomb header).
"""
from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from imgclf.runtime import open_model
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

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 32)) + chunk(b"IEND", b""))


VALID = [_img("PNG"), _img("JPEG"), _img("GIF", mode="P"), _img("BMP"), _img("PNG", (3, 300), "L"),
         _img("TIFF"), _img("WEBP"), _img("PNG", (1, 1), "RGBA"), _img("PNG", (9, 9), "I;16")]


def sometimes(draw, good, bad, p_bad: int = 8):
    """`good` most of the time, one of `bad` about once in `p_bad` draws."""
    return draw(st.sampled_from(bad)) if draw(st.integers(0, p_bad - 1)) == 0 else good


@st.composite
def file_bytes(draw):
    base = draw(st.sampled_from(VALID))
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
        fname = draw(st.sampled_from(["a.png", "x.jpg", "", "../../etc/passwd", 'q"uote.png', "\u00e9t\u00e9.gif"])
                     | text)
        data = draw(file_bytes())
        ctype = draw(st.sampled_from(["image/png", "application/octet-stream", "", "text/plain"]))
        head = f'Content-Disposition: form-data; name="{name}"; filename="{fname}"'
    else:
        data = draw(st.sampled_from(["3", "1", "0", "-1", "x", "", "999999999999999999999", "1e3"]) | text).encode(
            "utf-8", "surrogatepass")
        ctype = ""
        head = f'Content-Disposition: form-data; name="{name}"'
    head = sometimes(draw, head, ["Content-Disposition: form-data", "Content-Disposition: attachment",
                                  "X-Nothing: 1", "", head.replace("form-data; ", "")], p_bad=25)
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
    ctype = sometimes(draw, f"multipart/form-data; boundary={boundary}", [
        "multipart/form-data", f'multipart/form-data; boundary="{boundary}"; charset=latin-1',
        "application/json", "text/plain", "", "multipart/mixed; boundary=x", "multipart/form-data; boundary=",
        f"MULTIPART/FORM-DATA; BOUNDARY={boundary}"], p_bad=8)
    query = sometimes(draw, None, ["3", "0", "abc", "1" * 30, "-5", "", "2.5", "1"], p_bad=6)
    return ctype, body, query


@pytest.fixture(scope="module")
def client(tiny_best):
    app = create_app(open_model(tiny_best, device="cpu"),
                     ServeSettings(max_files=MAX_FILES, max_upload_mb=0.5, max_pixels=1_000_000, max_wait_ms=1))
    with TestClient(app, raise_server_exceptions=True) as c:  # a server-side exception fails the test
        t0 = time.time()
        while c.get("/ready").status_code != 200:
            assert time.time() - t0 < 60
            time.sleep(0.02)
        yield c


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(req=request())
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
