"""The server's trust features, in-process with the tiny checkpoint: `min_confidence` ("unsure" rows,
the server's default, a request's override, bad values) and `POST /explain` (a Grad-CAM overlay as PNG, its
limits, its errors, the API key). The ONNX side (no /explain, no torch) is in serve/test_slim.py."""

from __future__ import annotations

import io
import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2, whichever is installed
    from fastapi.testclient import TestClient

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.evaluation.explain import Explainer
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import open_model
from imgclf.serve import ServeSettings, create_app

TINY_CLASSES = ["cat", "dog", "fox"]  # conftest.tiny_data


def _bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _ready(client: TestClient) -> TestClient:
    t0 = time.time()
    while client.get("/ready").status_code != 200:
        assert time.time() - t0 < 60, client.get("/ready").json()  # a guard against a hang, not a timing
        time.sleep(0.02)
    return client


def _error(r, status: int, code: str, fragment: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code, body
    assert fragment.lower() in body["detail"].lower(), body
    return body


@pytest.fixture(scope="module")
def runner(tiny_best):
    return open_model(tiny_best, device="cpu")


@pytest.fixture(scope="module")
def files(image_of_class, tmp_path_factory) -> list:
    """Six small images of mixed colours (so the tiny model is sure of some and not of others), as files."""
    d = tmp_path_factory.mktemp("trust_images")
    rng = np.random.default_rng(5)
    paths = []
    for i in range(6):
        im = image_of_class(i % 3, 16, rng=rng)
        if i >= 3:  # a blend of two classes' colours: a less confident answer
            im = Image.blend(im, image_of_class((i + 1) % 3, 16, rng=rng), 0.5)
        p = d / f"{i}.png"
        im.save(p)
        paths.append(p)
    return paths


def _upload(paths) -> list:
    return [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.fixture(scope="module")
def plain(runner, files) -> list[dict]:
    """The answers without a threshold, and a threshold with some rows on each side of it."""
    with TestClient(create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, explain=False))) as c:
        return _ready(c).post("/predict", files=_upload(files), params={"top_k": 3}).json()["predictions"]


def _threshold(rows: list[dict]) -> float:
    probs = sorted({r["probability"] for r in rows})
    assert len(probs) >= 2, probs
    return (probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2


# ------------------------------------------------------------------------------------------------- min_confidence


def test_unsure_below_the_servers_default_as_predict_answers(runner, files, plain, tiny_best):
    p = _threshold(plain)
    app = create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, explain=False, min_confidence=p))
    with TestClient(app) as c:
        _ready(c)
        assert c.get("/metadata").json()["serve"]["min_confidence"] == p
        rows = c.post("/predict", files=_upload(files), params={"top_k": 3}).json()["predictions"]
    assert any(r["unsure"] for r in rows) and not all(r["unsure"] for r in rows)
    for a, b in zip(plain, rows):
        assert "unsure" not in a
        assert b["unsure"] == (a["probability"] < p)
        assert b["label"] == (None if b["unsure"] else a["label"])
        assert (b["index"], b["probability"], b["top_k"]) == (a["index"], a["probability"], a["top_k"])
    # the same rule as `imgclf predict --min-confidence`, row for row
    offline = Predictor(tiny_best, device="cpu", min_confidence=p).predict([str(f) for f in files], top_k=3)
    assert [r["unsure"] for r in offline] == [r["unsure"] for r in rows]
    assert [r["label"] for r in offline] == [r["label"] for r in rows]


def test_a_request_overrides_the_default(runner, files, plain):
    p = _threshold(plain)
    app = create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, explain=False, min_confidence=1.0))
    with TestClient(app) as c:
        _ready(c)
        default = c.post("/predict", files=_upload(files)).json()["predictions"]
        assert all(r["unsure"] and r["label"] is None for r in default)  # 1.0: unsure unless certain
        query = c.post("/predict", files=_upload(files), params={"min_confidence": str(p)}).json()["predictions"]
        # the form's value wins over the query's, as for top_k
        form = c.post(
            "/predict", files=_upload(files), params={"min_confidence": "1"}, data={"min_confidence": f" {p} "}
        ).json()["predictions"]
    want = [a["probability"] < p for a in plain]
    assert [r["unsure"] for r in query] == want and [r["unsure"] for r in form] == want
    # without a default, no "unsure" field unless the request asks
    with TestClient(create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, explain=False))) as c:
        _ready(c)
        assert c.get("/metadata").json()["serve"]["min_confidence"] is None
        assert "unsure" not in c.post("/predict", files=_upload(files[:1])).json()["predictions"][0]
        asked = c.post("/predict", files=_upload(files[:1]), data={"min_confidence": "1"}).json()
        assert asked["predictions"][0]["unsure"] is (plain[0]["probability"] < 1.0)


@pytest.mark.parametrize("value", ["0", "-0.5", "1.01", "nan", "inf", "high", "", "1e-400"])
def test_bad_min_confidence_is_a_422(runner, files, value):
    app = create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, explain=False))
    with TestClient(app) as c:
        _ready(c)
        for kw in ({"params": {"min_confidence": value}}, {"data": {"min_confidence": value}}):
            _error(c.post("/predict", files=_upload(files[:1]), **kw), 422, "invalid_min_confidence", "min_confidence")


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "x"])
def test_bad_min_confidence_flag_exits_2(tiny_best, value, capsys):
    from imgclf.serve.main import main as slim_main

    for run in (main, slim_main):
        argv = ["serve", tiny_best] if run is main else [tiny_best]
        try:  # one line, exit 2, before the model is opened (imgclf returns it, argparse raises it)
            code = run([*argv, "--port", "0", "--min-confidence", value])
        except SystemExit as e:
            code = e.code
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "--min-confidence" in err[-1]
    with pytest.raises(UsageError, match="--min-confidence"):
        ServeSettings(min_confidence=value).check()


# ------------------------------------------------------------------------------------------------- /explain


@pytest.fixture(scope="module")
def explaining(runner):
    with TestClient(create_app(runner, ServeSettings(max_wait_ms=1, warmup=False, max_pixels=4_000_000))) as c:
        yield _ready(c)


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def test_metadata_says_explain_is_available(explaining):
    info = explaining.get("/metadata").json()["explain"]
    assert info["available"] is True and "Grad-CAM" in info["method"] and info["layer"]


def test_explain_answers_the_overlay_png(explaining, image_of_class, tiny_best):
    rng = np.random.default_rng(1)
    small = image_of_class(1, (40, 30), rng=rng)
    r = explaining.post("/explain", files={"image": ("dog.png", _bytes(small), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert _png_size(r.content) == (40, 30)  # the original's size
    info = json.loads(r.headers["x-explanation"])
    assert info["target"] == info["label"] and info["label"] in TINY_CLASSES  # the predicted class by default
    left, top, right, bottom = info["box"]  # the centre square the model saw, in the original's pixels
    # centred to within the rounding of the 40 x 30 -> 21 x 16 resize (1.9 original pixels per model pixel)
    assert (top, bottom) == (0, 30) and 28 <= right - left <= 32 and abs(left + right - 40) <= 4
    # the picture `imgclf explain` draws for the same image
    png, ref = Explainer(tiny_best, device="cpu").overlay_png(small, None, max_side=1024)
    got = np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)
    want = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)
    assert np.abs(got - want).max() <= 2  # one forward/backward pass apart, colour-mapped to 8 bits
    assert ref["label"] == info["label"] and ref["target"] == info["target"]
    # a large photo comes back at most 1024 px on its longer side, aspect kept
    big = image_of_class(2, (1500, 1000), rng=rng)
    r = explaining.post("/explain", files={"image": ("big.jpg", _bytes(big, "JPEG", quality=85), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert _png_size(r.content) == (1024, 683)


def test_explain_target_from_query_or_form(explaining, image_of_class):
    data = _bytes(image_of_class(0, 24, rng=np.random.default_rng(2)))
    for kw in (
        {"params": {"target": "fox"}},
        {"data": {"target": "fox"}},
        {"params": {"target": "cat"}, "data": {"target": "fox"}},
    ):
        r = explaining.post("/explain", files={"image": ("a.png", data)}, **kw)
        assert r.status_code == 200, r.text
        assert json.loads(r.headers["x-explanation"])["target"] == "fox"


def test_explain_refusals_are_json_4xx(explaining, image_of_class):
    data = _bytes(image_of_class(0, 24, rng=np.random.default_rng(3)))
    one = {"image": ("a.png", data)}
    _error(
        explaining.post("/explain", files=one, params={"target": "cta"}), 422, "unknown_target", "did you mean 'cat'"
    )
    _error(explaining.post("/explain", files=one, data={"target": "wolf"}), 422, "unknown_target", "cat, dog, fox")
    _error(explaining.post("/explain", files={"image": ("x.png", b"not an image")}), 422, "not_an_image")
    _error(explaining.post("/explain", files={"image": ("x.png", data[:60])}), 422, "truncated_image")
    _error(explaining.post("/explain", files={"image": ("e.png", b"")}), 422, "empty_file")
    two = [("image", ("a.png", data)), ("image", ("b.png", data))]
    _error(explaining.post("/explain", files=two), 400, "too_many_files", "1 image")
    _error(explaining.post("/explain", data={"target": "cat"}, files={"x": ("a.png", data)}), 400, "unexpected_field")
    _error(
        explaining.post("/explain", content=b"{}", headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    # the pixel limit (4 MP here) from the header, before decoding
    huge = _bytes(Image.new("RGB", (2500, 2000)))
    _error(explaining.post("/explain", files={"image": ("h.png", huge)}), 413, "too_many_pixels", "--max-pixels")
    # the upload limit
    _error(
        explaining.post("/explain", files={"image": ("a.png", data)}, headers={"content-length": str(11 * 2**20)}),
        413,
        "upload_too_large",
    )


def test_explain_out_of_memory_is_a_503_to_retry_not_a_500(explaining, image_of_class, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(explaining.app.state.imgclf.explainer, "overlay_png", exhausted)
    r = explaining.post(
        "/explain", files={"image": ("a.png", _bytes(image_of_class(0, 24, rng=np.random.default_rng(5))))}
    )
    _error(r, 503, "overloaded", "out of memory")
    assert r.headers["retry-after"] == "1"
    monkeypatch.undo()
    assert (
        explaining.post(
            "/explain", files={"image": ("a.png", _bytes(image_of_class(0, 24, rng=np.random.default_rng(5))))}
        ).status_code
        == 200
    )


def test_explain_needs_the_api_key(runner, image_of_class):
    data = _bytes(image_of_class(2, 24, rng=np.random.default_rng(4)))
    app = create_app(runner, ServeSettings(api_key="s3cret", warmup=False))
    with TestClient(app) as c:
        _ready(c)
        _error(c.post("/explain", files={"image": ("a.png", data)}), 401, "unauthorized")
        _error(c.post("/explain", files={"image": ("a.png", data)}, headers={"X-API-Key": "nope"}), 401, "unauthorized")
        r = c.post("/explain", files={"image": ("a.png", data)}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_explain_switched_off(runner, image_of_class):
    data = _bytes(image_of_class(2, 24, rng=np.random.default_rng(4)))
    app = create_app(runner, ServeSettings(warmup=False, explain=False))
    assert app.state.imgclf.explainer is None
    with TestClient(app) as c:
        _ready(c)
        info = c.get("/metadata").json()["explain"]
        assert info["available"] is False and "--no-explain" in info["reason"]
        _error(c.post("/explain", files={"image": ("a.png", data)}), 400, "explain_unavailable", "--no-explain")
