"""The HTTP service in-process (FastAPI's TestClient) with the tiny model trained once per session: every
endpoint, upload order, every refusal with its status and JSON, decompression bombs, the API key, dynamic
batching (read off the batch-size histogram, not off timings), timeouts, and the CLI's checks up front."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import select
import socket
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2, whichever is installed
    from fastapi.testclient import TestClient

from conftest import chromium_page, needs_chromium

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import open_model
from imgclf.serve import ServeSettings, create_app
from imgclf.serve.batcher import DynamicBatcher, Overloaded
from imgclf.serve.server import bind, make_server

TINY_CLASSES = ["cat", "dog", "fox"]  # conftest.tiny_data
UPLOAD_MB = 1.0
MAX_FILES = 8


def _bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    t0 = time.time()
    while client.get("/ready").status_code != 200:
        assert time.time() - t0 < timeout, client.get("/ready").json()
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runner(tiny_best):
    return open_model(tiny_best, device="cpu")


@pytest.fixture(scope="module")
def client(runner):
    app = create_app(runner, ServeSettings(max_upload_mb=UPLOAD_MB, max_files=MAX_FILES, max_wait_ms=2))
    with TestClient(app) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def images(image_of_class):
    """One PNG per class, in the class colours, and a JPEG of a different size."""
    rng = np.random.default_rng(0)
    out = {c: _bytes(image_of_class(i, 16, rng=rng)) for i, c in enumerate(TINY_CLASSES)}
    out["jpeg"] = _bytes(image_of_class(1, (40, 30), rng=rng), "JPEG", quality=90)
    return out


def _error(r, status: int, code: str, fragment: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert fragment.lower() in body["detail"].lower(), body
    return body


# ------------------------------------------------------------------------------------------------- endpoints


def test_health_ready_metadata(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    m = client.get("/metadata").json()
    assert m["model"] == "test_tiny" and m["format"] == "checkpoint"
    assert m["classes"] == TINY_CLASSES and m["num_classes"] == 3
    assert set(m["preprocess"]) >= {"img_size", "resize", "mean", "std"}
    assert m["file"] == "best.pt" and "path" not in m  # no server paths handed out
    assert m["serve"]["max_files"] == MAX_FILES and m["serve"]["api_key_required"] is False
    assert "api_key" not in m["serve"]


def test_predict_answers_in_upload_order(client, images):
    order = ["fox", "cat", "dog", "cat"]
    files = [("image", (f"{i}-{c}.png", images[c], "image/png")) for i, c in enumerate(order)]
    r = client.post("/predict", files=files, params={"top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == [f"{i}-{c}.png" for i, c in enumerate(order)]
    for p in preds:
        assert set(p) == {"filename", "label", "index", "probability", "top_k"}
        assert TINY_CLASSES[p["index"]] == p["label"]
        probs = [t["probability"] for t in p["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1.0) < 1e-4
        assert p["top_k"][0] == {"label": p["label"], "probability": p["probability"]}
    # the same image gives the same answer wherever it sits in the request
    assert preds[1]["top_k"] == preds[3]["top_k"]


def test_predict_matches_predictor(client, images, tiny_best, tmp_path):
    """Bit for bit what `Predictor` computes from the same files (decode, resize, crop, normalise, model)."""
    paths = []
    for name in ("dog", "jpeg"):
        p = tmp_path / (name + (".jpg" if name == "jpeg" else ".png"))
        p.write_bytes(images[name])
        paths.append(p)
    expected = Predictor(tiny_best, device="cpu").predict([str(p) for p in paths], top_k=3)
    r = client.post("/predict", files=[("image", (p.name, p.read_bytes())) for p in paths], data={"top_k": "3"})
    got = r.json()["predictions"]
    for e, g in zip(expected, got):
        assert g["label"] == e["label"] and g["index"] == e["index"]
        for te, tg in zip(e["top_k"], g["top_k"]):
            assert te["label"] == tg["label"]
            assert tg["probability"] == pytest.approx(te["probability"], abs=1e-6)


def test_decoding_gives_predictors_pixels(tmp_path, image_of_class):
    """The server's decode (crop before the channel move, normalise per batch) is bit-for-bit Predictor's input,
    for JPEGs decoded at reduced scale, palette/grey/alpha/16-bit PNGs, EXIF rotation, and an image smaller than
    the crop (padded)."""
    from imgclf.core.artifact import Preprocess
    from imgclf.data.images import load_image, pil_to_uint8
    from imgclf.data.pipeline import eval_transform
    from imgclf.serve.decode import decode_upload
    from imgclf.serve.runner_model import NormalizeUploads

    rng = np.random.default_rng(1)
    photo = image_of_class(2, (300, 200), rng=rng)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    photo.save(rotated, "JPEG", exif=exif)
    files = {
        "photo.jpg": _bytes(photo, "JPEG", quality=85),
        "rotated.jpg": rotated.getvalue(),
        "palette.png": _bytes(photo.convert("P"), "PNG"),
        "grey.png": _bytes(photo.convert("L"), "PNG"),
        "alpha.png": _bytes(photo.convert("RGBA"), "PNG"),
        "deep.png": _bytes(Image.fromarray((rng.integers(0, 65535, (50, 70))).astype(np.uint16)), "PNG"),
        "small.png": _bytes(image_of_class(0, (20, 12), rng=rng), "PNG"),
    }
    for pre in (
        Preprocess(img_size=64, resize=73, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]),
        Preprocess(img_size=32, resize=24, mean=[0.5] * 3, std=[0.5] * 3),
    ):  # resize < crop: padded
        ref_tf, batch_tf = eval_transform(pre), NormalizeUploads(pre)
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            expected = ref_tf(pil_to_uint8(load_image(str(tmp_path / name), resize=pre.resize)))
            got = batch_tf([decode_upload(data, pre, max_pixels=10**7)])[0]
            assert got.shape == expected.shape and torch.equal(got, expected), name


def test_top_k_query_form_and_clamp(client, images):
    f = [("image", ("a.png", images["cat"]))]
    assert len(client.post("/predict", files=f, params={"top_k": 1}).json()["predictions"][0]["top_k"]) == 1
    assert len(client.post("/predict", files=f, params={"top_k": 99}).json()["predictions"][0]["top_k"]) == 3
    assert len(client.post("/predict", files=f).json()["predictions"][0]["top_k"]) == 3  # default 5, clamped
    assert len(client.post("/predict", files=f, data={"top_k": "2"}).json()["predictions"][0]["top_k"]) == 2
    _error(client.post("/predict", files=f, params={"top_k": 0}), 422, "invalid_parameter", "top_k")
    _error(client.post("/predict", files=f, params={"top_k": -1}), 422, "invalid_parameter", "top_k")
    _error(client.post("/predict", files=f, data={"top_k": "0"}), 422, "invalid_top_k", "at least 1")
    _error(client.post("/predict", files=f, params={"top_k": "many"}), 422, "invalid_parameter", "top_k")
    _error(client.post("/predict", files=f, data={"top_k": "-3"}), 422, "invalid_top_k", "at least 1")
    _error(client.post("/predict", files=f, data={"top_k": "x"}), 422, "invalid_top_k", "whole number")


def test_metrics(client, images):
    client.post("/predict", files=[("image", ("a.png", images["cat"]))])
    client.post("/predict", files=[("image", ("a.txt", b"not an image"))])
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    t = r.text
    assert re.search(r'imgclf_http_requests_total\{method="POST",path="/predict",status="200"\} [1-9]', t)
    assert re.search(r'imgclf_http_requests_total\{method="POST",path="/predict",status="422"\} [1-9]', t)
    assert 'imgclf_http_request_duration_seconds_bucket{le="0.005",path="/predict"}' in t
    assert re.search(r"^imgclf_batch_size_count [1-9]", t, re.M)
    assert re.search(r"^imgclf_images_processed_total [1-9]", t, re.M)
    assert re.search(r'^imgclf_images_rejected_total\{reason="not_an_image"\} [1-9]', t, re.M)
    assert re.search(r"^imgclf_ready 1", t, re.M)
    client.get("/no/such/path/12345")
    assert 'path="other"' in client.get("/metrics").text and "12345" not in client.get("/metrics").text


def test_page_and_docs(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="file"' in r.text and "predict" in r.text and "apikey" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN: works offline
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["items"]["format"] == "binary"
    assert {"/health", "/ready", "/metadata", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_docs_pages_load_nothing_from_elsewhere(client, runner, monkeypatch):
    """Issue 22, defect 11: /docs loaded Swagger UI from a CDN by major version, without an integrity hash (blank
    when air-gapped; a third-party script on the model's origin). Now /docs and /redoc load their scripts, CSS
    and icon from the app (the fastapi-offline package's copies), and every one of them answers; without that
    package there is no /docs at all rather than the CDN's."""
    for page, wanted in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        urls = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', r.text)
        urls += re.findall(r'(?:url|spec-url)\s*[:=]\s*["\']([^"\']+)["\']', r.text)
        assert any(u.endswith(wanted) for u in urls), (page, urls)
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text, page
        for u in urls:
            assert u.startswith("/") and not u.startswith("//"), (page, u)  # this origin only
            asset = client.get(u)
            assert asset.status_code == 200 and len(asset.content) > 100, (page, u, asset.status_code)
    assert "javascript" in client.get("/docs-assets/swagger-ui-bundle.js").headers["content-type"]

    monkeypatch.setattr("imgclf.serve.app.FastAPIOffline", None)
    with TestClient(create_app(runner, ServeSettings(warmup=False))) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200


# ------------------------------------------------------------------------------------------------- refusals


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height RGB pixels, then a tiny IDAT: what a
    decompression bomb looks like before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bombs_refused(client):
    _error(
        client.post("/predict", files=[("image", ("bomb.png", _png_header_only(100_000, 100_000)))]),
        413,
        "too_many_pixels",
        "10,000,000,000 pixels",
    )
    # a real one: 7,000 x 7,000 bilevel pixels (49 M, over the default 40 M) compress to a few KB
    real = _bytes(Image.new("1", (7000, 7000)), "PNG")
    assert len(real) < 100_000
    body = _error(client.post("/predict", files=[("image", ("real.png", real))]), 413, "too_many_pixels", "49,000,000")
    assert "40,000,000" in body["detail"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("size", [(400_000, 1), (1, 400_000)])
def test_absurd_shapes_refused_from_the_header(client, images, size):
    """A ~1 KB PNG of 400000 x 1 pixels is under --max-pixels, but resizing its shorter side asks for gigabytes:
    a 422 that says the size and the limit, never a 5xx (and never a resize)."""
    strip = _bytes(Image.new("RGB", size), "PNG")
    assert len(strip) < 5_000
    r = client.post("/predict", files=[("image", ("ok.png", images["cat"])), ("image", ("strip.png", strip))])
    body = _error(r, 422, "bad_shape", "aspect ratio of 400,000:1, over the limit of 100:1")
    assert f"{size[0]:,} x {size[1]:,} pixels" in body["detail"] and "image 2 of 2 ('strip.png')" in body["detail"]
    assert body["index"] == 1
    assert re.search(r'^imgclf_images_rejected_total\{reason="bad_shape"\} [1-9]', client.get("/metrics").text, re.M)


@pytest.mark.parametrize("size", [(160, 16), (16, 160), (1600, 16)])
def test_panoramas_are_served(client, image_of_class, size):
    """10:1 (and up to the 100:1 limit) is a panorama, not an attack."""
    im = _bytes(image_of_class(1, size, rng=np.random.default_rng(0)), "PNG")
    r = client.post("/predict", files=[("image", ("pano.png", im))])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] in TINY_CLASSES


def test_unreadable_images_refused(client, images):
    jpeg = images["jpeg"]
    cases = [
        (b"this is not an image", 422, "not_an_image", "not an image"),
        (b"", 422, "empty_file", "empty"),
        (jpeg[: len(jpeg) // 2], 422, "truncated_image", "truncated"),
        (images["cat"][:40], 422, "", ""),  # a PNG cut inside its first chunk: truncated or unreadable
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 422, "not_an_image", "accepted formats"),
    ]
    for data, status, code, fragment in cases:
        r = client.post("/predict", files=[("image", ("ok.png", images["cat"])), ("image", ("bad.bin", data))])
        assert r.status_code == status, (data[:20], r.text)
        body = r.json()
        if code:
            assert body["error"] == code, body
        else:
            assert body["error"] in ("truncated_image", "unreadable_image", "not_an_image"), body
        assert fragment in body["detail"] and "image 2 of 2 ('bad.bin')" in body["detail"]
        assert body["index"] == 1 and body["filename"] == "bad.bin"


def test_request_shape_refused(client, images):
    png = images["cat"]
    _error(client.post("/predict", files=[("file", ("a.png", png))]), 400, "unexpected_field", "'file'")
    _error(client.post("/predict", data={"top_k": "2"}, files=[("other", ("", b""))]), 400, "unexpected_field")
    _error(client.post("/predict", files={"top_k": (None, "2")}), 400, "missing_image", "field 'image'")
    _error(client.post("/predict", files={"image": (None, "hello")}), 400, "not_a_file", "file")
    _error(
        client.post("/predict", files=[("image", (f"{i}.png", png)) for i in range(MAX_FILES + 1)]),
        400,
        "too_many_files",
        f"at most {MAX_FILES}",
    )
    _error(client.post("/predict", json={"image": "x"}), 415, "unsupported_media_type", "multipart/form-data")
    _error(client.post("/predict"), 415, "unsupported_media_type", "no content-type")
    _error(
        client.post("/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"}),
        400,
        "bad_multipart",
    )
    _error(
        client.post("/predict", content=b"x", headers={"content-type": "multipart/form-data"}),
        400,
        "bad_multipart",
        "boundary",
    )
    _error(client.get("/predict"), 405, "method_not_allowed")
    _error(client.get("/nothing-here"), 404, "not_found")


def test_upload_limits(client):
    big = np.random.default_rng(0).integers(0, 256, int(UPLOAD_MB * 1024 * 1024) + 10_000, dtype=np.uint8).tobytes()
    _error(client.post("/predict", files=[("image", ("big.png", big))]), 413, "upload_too_large", "limit")

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        boundary = b"b0undary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]
        yield b"\r\n--" + boundary + b"--\r\n"

    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b0undary"})
    _error(r, 413, "upload_too_large", "limit")
    _error(
        client.post(
            "/predict",
            content=b"",
            headers={"content-type": "multipart/form-data; boundary=a", "content-length": "99999999999"},
        ),
        413,
        "upload_too_large",
    )
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------- API key


def test_api_key(runner, images, monkeypatch):
    app = create_app(runner, ServeSettings(api_key="s3cret", warmup=False))
    f = [("image", ("a.png", images["cat"]))]
    with TestClient(app) as c:
        _wait_ready(c)
        for path, method in (("/predict", "post"), ("/metadata", "get"), ("/metrics", "get")):
            r = getattr(c, method)(path)
            _error(r, 401, "unauthorized", "api key")
            assert r.headers["www-authenticate"] == "Bearer"
        _error(c.post("/predict", files=f, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        _error(c.post("/predict", files=f, headers={"X-API-Key": "s3cre"}), 401, "unauthorized")
        assert c.post("/predict", files=f, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/predict", files=f, headers={"authorization": "bearer s3cret"}).status_code == 200
        assert c.post("/predict", files=f, headers={"X-API-Key": "s3cret"}).status_code == 200
        meta = c.get("/metadata", headers={"X-API-Key": "s3cret"}).json()
        assert meta["serve"]["api_key_required"] is True and "s3cret" not in str(meta)
        for open_path in ("/health", "/ready", "/", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path
        assert 'status="401"' in c.get("/metrics", headers={"X-API-Key": "s3cret"}).text


# ------------------------------------------------------------------------------------------------- batching


def _bucket(text: str, le: str) -> float:
    return float(re.search(rf'^imgclf_batch_size_bucket\{{le="{le}"\}} ([0-9.]+)$', text, re.M).group(1))


def test_concurrent_requests_share_batches(runner, images):
    """Four clients at once, batches of up to 4, a long wait for stragglers: the model sees one batch of 4."""
    app = create_app(runner, ServeSettings(max_batch_size=4, max_wait_ms=5000, warmup=False))
    with TestClient(app) as c:
        _wait_ready(c)
        results = [None] * 4
        go = threading.Barrier(4)

        def post(i):
            go.wait()
            results[i] = c.post("/predict", files=[("image", (f"{i}.png", images[TINY_CLASSES[i % 3]]))])

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200] * 4
        assert [r.json()["predictions"][0]["filename"] for r in results] == [f"{i}.png" for i in range(4)]
        m = c.get("/metrics").text
        assert re.search(r"^imgclf_batch_size_count 1\.0$", m, re.M), m
        assert _bucket(m, "4.0") - _bucket(m, "2.0") == 1  # the one batch held 3 or 4 images...
        assert re.search(r"^imgclf_batch_size_sum 4\.0$", m, re.M)  # ...and exactly 4
        assert re.search(r"^imgclf_images_processed_total 4\.0$", m, re.M)


def test_batcher_splits_merges_and_sheds():
    async def scenario():
        sizes = []

        def predict(xs):
            sizes.append(len(xs))
            return torch.stack(xs).float().view(len(xs), -1)[:, :2]

        b = DynamicBatcher(predict, max_batch_size=3, max_wait_s=0.5, max_queue=8)
        b.start()
        xs = [torch.full((1, 1, 1), i, dtype=torch.uint8) for i in range(7)]
        outs = await asyncio.gather(b.submit(xs[:2]), b.submit(xs[2:3]), b.submit(xs[3:7]))
        assert [o[0].item() for out in outs for o in out] == list(range(7))  # every image its own answer
        assert sizes == [3, 3, 1] or sizes[:2] == [3, 3]
        with pytest.raises(Overloaded):
            await b.submit([xs[0]] * 9)
        # a cancelled request's queued images are dropped, not computed
        t = asyncio.ensure_future(b.submit(xs[:1]))
        await asyncio.sleep(0)
        t.cancel()
        n = len(sizes)
        assert (await b.submit(xs[1:2]))[0][0].item() == 1
        assert sum(sizes[n:]) == 1
        await b.stop()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------- failures


class BrokenRunner:
    """The tiny model, or (fail=True) a model that raises, to see the server's own failures."""

    def __init__(self, runner, fail: bool = False):
        self.inner, self.fail = runner, fail
        for k in ("path", "format", "model_name", "classes", "preprocess", "config", "extra"):
            setattr(self, k, getattr(runner, k))

    def metadata(self):
        return self.inner.metadata()

    def logits(self, x):
        if self.fail:
            raise RuntimeError("the model broke")
        return self.inner.logits(x)


class GatedRunner(BrokenRunner):
    """The tiny model, held inside `logits` until the test opens the gate: the state of the model call is
    observed (started, finished, batch sizes), never its duration."""

    def __init__(self, runner):
        super().__init__(runner)
        self.entered, self.gate = threading.Event(), threading.Event()
        self.batches: list[int] = []
        self.finished = 0

    def logits(self, x):
        self.batches.append(len(x))
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"  # a guard against a hang, not a timing
        out = self.inner.logits(x)
        self.finished += 1
        return out


def test_timeout_is_a_504_and_the_request_is_cancelled(runner, images):
    """A request whose model call outlasts the timeout gets a 504 while the model is still busy (the handler does
    not wait for it), and a request that timed out while queued is cancelled: its image is never computed."""
    gated = GatedRunner(runner)
    app = create_app(gated, ServeSettings(timeout_s=1.0, warmup=False, max_batch_size=1))
    f = [("image", ("a.png", images["cat"]))]
    with TestClient(app) as c:
        _wait_ready(c)
        _error(c.post("/predict", files=f), 504, "timeout", "1 s")  # A: its batch went to the model
        assert gated.finished == 0  # answered while the model still held A's batch: the handler did not wait
        _until(gated.entered.is_set)
        _error(c.post("/predict", files=f), 504, "timeout", "1 s")  # B: queued behind A's batch
        assert gated.batches == [1] and app.state.imgclf.batcher.waiting == 1
        gated.gate.set()
        assert c.post("/predict", files=f).status_code == 200  # C
        assert gated.batches == [1, 1] and gated.finished == 2  # A's batch, then C's: B's image was dropped
        assert app.state.imgclf.batcher.waiting == 0
        assert c.get("/health").status_code == 200


def test_model_failure_is_a_json_500_and_warmup_failure_is_not_ready(runner, images):
    app = create_app(BrokenRunner(runner, fail=True), ServeSettings())
    state = app.state.imgclf
    with TestClient(app, raise_server_exceptions=False) as c:
        _until(lambda: state.not_ready_reason.startswith("warm-up failed"))
        _error(c.get("/ready"), 503, "not_ready", "warm-up failed")
        r = c.post("/predict", files=[("image", ("a.png", images["cat"]))])
        _error(r, 500, "internal_error")
        assert c.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------- slow clients
# A real uvicorn server (make_server: what serve.server.run runs) in a thread, on a free loopback port.


@contextlib.contextmanager
def _uvicorn(app, **limits):
    sock = bind("127.0.0.1", 0)
    server = make_server(app, log_level="warning", **limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _until(lambda: server.started or not thread.is_alive())
        assert server.started, "the server did not start"
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _until(condition, tries: int = 6000) -> None:
    """Poll `condition` (a state, not a duration) every 10 ms, at most `tries` times (a guard against a hang)."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.01)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(60)  # a guard against a hang: every read below expects an answer or a close
    return s


def _read_response(s: socket.socket, *, until_close: bool) -> tuple[int, dict, bytes]:
    """One HTTP response from `s`: (status, lower-case headers, body); with until_close, also the server's close."""
    raw = b""
    for _ in range(1000):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if sep:
            headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
            if len(rest) >= int(headers.get("content-length", 0)) and not until_close:
                return int(head[9:12]), headers, rest
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    return int(head[9:12]), dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]), body


def _get(port: int, path: str = "/health") -> tuple[int, dict, bytes]:
    with _connect(port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return _read_response(s, until_close=True)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_no_page_can_be_framed_and_head_answers_like_get(runner, http):
    """Issue 22, defect 10: the page (which holds an API-key field) could be framed by another site, and HEAD /
    was 405. Now every answer (the page, JSON, /docs, a 404, the guard's 401) says X-Frame-Options: DENY and
    CSP frame-ancestors 'none', and HEAD / is GET's 200 without the body, through a real uvicorn."""
    app = create_app(runner, ServeSettings(warmup=False, api_key="k"))
    with _uvicorn(app, http=http) as (_, port):
        status, page_headers, page = _get(port, "/")
        assert status == 200 and b'id="file"' in page
        with _connect(port) as s:
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, headers, body = _read_response(s, until_close=True)
        assert status == 200 and body == b"", (status, body[:100])
        assert headers["content-type"] == page_headers["content-type"] and headers["content-length"] == str(len(page))
        assert headers["content-security-policy"] == page_headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'self'" in headers["content-security-policy"]  # the page's own policy, kept
        for path, want in (
            ("/", 200),
            ("/health", 200),
            ("/docs", 200),
            ("/openapi.json", 200),
            ("/nope", 404),
            ("/metadata", 401),
        ):
            status, headers, _ = _get(port, path)
            assert status == want, path
            assert headers["x-frame-options"] == "deny", path  # _read_response lower-cases header lines
            assert "frame-ancestors 'none'" in headers["content-security-policy"], path
            assert headers["x-content-type-options"] == "nosniff", path


@pytest.mark.integration
@needs_chromium
def test_docs_render_offline_and_no_site_can_frame_the_page_in_chromium(runner):
    """In a real browser (issue 22, defects 10 and 11): /docs renders the API's operations with every request
    to the server itself, and a page of another origin that frames the web page gets no page in its frame."""
    app = create_app(runner, ServeSettings(warmup=False))
    with _uvicorn(app) as (_, port), chromium_page() as page:
        base = f"http://127.0.0.1:{port}"
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/predict']")
        assert requests and all(u.startswith(base + "/") for u in requests), requests
        page.goto(f"http://localhost:{port}/health")  # another origin than 127.0.0.1's
        page.set_content(f'<iframe id="f" src="{base}/" width="600" height="400"></iframe>')
        framed = [f for f in page.frames if f != page.main_frame]
        assert framed and all(f.query_selector("#file") is None for f in framed), [f.url for f in framed]


PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # the blank line that ends the headers never comes


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_clients_that_never_finish_their_headers_are_cut_off(runner, http):
    """Four sockets that send half a request filled --max-concurrency 4 forever (every request, /health
    included, got a 503). Now each is answered 408 and closed after the header timeout, also when it trickles
    its headers byte by byte, and also on a kept-alive connection after a first answered request."""
    app = create_app(runner, ServeSettings(warmup=False))
    with _uvicorn(app, max_concurrency=4, header_timeout=1.0, http=http) as (server, port):
        kept_alive = _connect(port)
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(kept_alive, until_close=False)[0] == 200
        held = [kept_alive] + [_connect(port) for _ in range(3)]
        for s in held:
            s.sendall(PARTIAL)
        for s in held:
            status, headers, body = _read_response(s, until_close=True)  # the server closes it
            assert status == 408 and headers["content-type"] == "application/json", body
            assert json.loads(body)["error"] == "header_timeout" and "--header-timeout" in json.loads(body)["detail"]
            s.close()

        with _connect(port) as slow:  # one header byte every 10 ms, for up to 6,000 bytes
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            cut = False
            for _ in range(6000):
                if select.select([slow], [], [], 0.01)[0]:
                    cut = True
                    break
                try:
                    slow.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
            assert cut, "a client trickling its headers was never cut off"

        _until(lambda: not server.server_state.connections)
        status, _, body = _get(port)
        assert status == 200 and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_slow_upload_is_bounded_by_the_request_timeout(runner, http):
    """Headers in time, then a body that trickles: the app's request timeout answers 408 upload_timeout, and
    the connection, which still carries the rest of that body, is closed without a second answer."""
    app = create_app(runner, ServeSettings(warmup=False, timeout_s=1.0))
    with _uvicorn(app, header_timeout=1.0, http=http) as (server, port), _connect(port) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; '
            b'filename="a.png"\r\n\r\n'
        )
        received = b""
        for _ in range(6000):  # one body byte every 10 ms until the server closes (6,000 bytes at most)
            if select.select([s], [], [], 0.01)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
                continue
            try:
                s.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert received.count(b"HTTP/1.1 ") == 1, received
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and json.loads(body)["error"] == "upload_timeout", received


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_over_the_concurrency_limit_is_a_json_503(runner, http):
    app = create_app(runner, ServeSettings(warmup=False))
    with _uvicorn(app, max_concurrency=4, header_timeout=60.0, http=http) as (server, port):
        held = [_connect(port) for _ in range(4)]
        try:
            for s in held:
                s.sendall(PARTIAL)
            _until(lambda: len(server.server_state.connections) >= 4)
            status, headers, body = _get(port)
            assert status == 503 and headers["content-type"] == "application/json" and headers["retry-after"] == "1"
            payload = json.loads(body)
            assert payload["error"] == "overloaded" and "--max-concurrency" in payload["detail"], payload
        finally:
            for s in held:
                s.close()
        _until(lambda: not server.server_state.connections)
        assert _get(port)[0] == 200


def test_server_limits_are_checked_up_front():
    for kw, flag in (
        ({"header_timeout": 0}, "--header-timeout"),
        ({"header_timeout": float("nan")}, "--header-timeout"),
        ({"max_concurrency": 0}, "--max-concurrency"),
    ):
        with pytest.raises(UsageError, match=flag):
            make_server(None, **kw)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_refuses_before_binding(capsys, tiny_best, tmp_path):
    assert main(["serve", str(tmp_path / "missing.pt"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert main(["serve", tiny_best, "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main(["serve", tiny_best, "--port", "70000"]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", tiny_best, "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_help_lists_the_flags(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--max-batch-size",
        "--max-wait-ms",
        "--api-key",
        "--max-upload-mb",
        "--max-pixels",
        "--max-files",
        "--timeout",
    ):
        assert flag in out
    assert "127.0.0.1" in out


# ------------------------------------------------------------------------------------------------- exported files


@pytest.mark.kernels
@pytest.mark.parametrize("fmt", ["onnx-int8", "torchscript", "pt2"])
def test_serves_exported_files(fmt, tiny_best, images, tmp_path):
    """The app only uses the Runner interface, so an exported file serves like the checkpoint it came from."""
    if fmt.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    from imgclf.exporting.export import FORMATS, export

    out = tmp_path / f"model{FORMATS[fmt].suffix}"
    export(tiny_best, fmt, out=str(out), calib_images=32, verify_images=24)
    f = [("image", (f"{c}.png", images[c])) for c in TINY_CLASSES]
    app = create_app(str(out), ServeSettings(max_wait_ms=1))
    if fmt.startswith("onnx"):  # the served session does not spin-wait against the decode threads
        opts = app.state.imgclf.runner.session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with TestClient(app) as c:
        _wait_ready(c)
        meta = c.get("/metadata").json()
        assert meta["format"] == fmt and meta["classes"] == TINY_CLASSES and meta["file"] == out.name
        got = c.post("/predict", files=f).json()["predictions"]
    with TestClient(create_app(tiny_best, ServeSettings(max_wait_ms=1, warmup=False))) as c:
        _wait_ready(c)
        ref = c.post("/predict", files=f).json()["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in ref]
    assert all(
        abs(g["probability"] - r["probability"]) < (0.1 if fmt == "onnx-int8" else 1e-4) for g, r in zip(got, ref)
    )


def test_warmup_runs_every_kind_of_batch_largest_first():
    from imgclf.serve.state import warmup_sizes

    for m in (1, 2, 3, 8, 32, 64):
        sizes = warmup_sizes(m)
        assert sizes[0] == m  # allocators size their first blocks for the largest batch
        assert {1, m} <= set(sizes) <= set(range(1, m + 1))
        assert len(set(sizes)) >= min(m, 5)  # more than the two extremes: a spread of batch sizes


def test_server_sessions_do_not_spin_or_keep_memory_patterns():
    """The server's onnxruntime session sleeps between runs (the decode threads need the cores) and plans no
    memory per input shape (a pattern per batch size grew the resident memory by half)."""
    from imgclf.infer.runtime import onnx_session_options

    served = onnx_session_options(2, spin=False)
    assert served.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not served.enable_mem_pattern
    offline = onnx_session_options(2)
    assert not offline.enable_mem_pattern
    assert offline.intra_op_num_threads == 2
