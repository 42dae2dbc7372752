"""Serving a multi-label model: /predict answers {"labels", "scores"} per image, as `imgclf predict` does, from a
checkpoint (PyTorch) and from its ONNX export (the slim path: a NumPy sigmoid and the thresholds in the ONNX
metadata); /metadata shows the task and thresholds; min_confidence is refused for it in one line."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import torch

from imgclf.core.errors import UsageError
from imgclf.infer.predict import Predictor
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, save_checkpoint
from imgclf.serve import ServeSettings, create_app

pytest.importorskip("onnxruntime")
from conftest import chromium_page, needs_chromium
from fastapi.testclient import TestClient

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def test_images(multilabel_csv) -> list:
    return sorted((multilabel_csv.parent / "img").glob("test_*.png"))


@contextlib.contextmanager
def _serve(model):
    app = create_app(model, ServeSettings(max_wait_ms=1, warmup=False, explain=False, device="cpu"))
    with TestClient(app) as client:
        t0 = time.time()
        while client.get("/ready").status_code != 200:
            assert time.time() - t0 < 60  # a guard against a hang, not a timing
            time.sleep(0.02)
        yield app, client


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_predict_answers_the_set_and_scores_as_imgclf_predict(kind, multilabel_ckpt, multilabel_onnx, test_images):
    path = multilabel_ckpt if kind == "checkpoint" else multilabel_onnx
    with _serve(path) as (app, c):
        if kind == "onnx":
            assert type(app.state.imgclf.model).__name__ == "OnnxModel"  # the torch-free model
        meta = c.get("/metadata").json()
        assert meta["task"] == "multilabel" and meta["thresholds"] == [0.5, 0.4, 0.6]
        files = [("image", (p.name, p.read_bytes())) for p in test_images]
        r = c.post("/predict?top_k=1", files=files)  # top_k does not apply: every label's score comes back
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        for refused in (
            c.post("/predict?min_confidence=0.5", files=files[:1]),
            c.post("/predict", files=files[:1], data={"min_confidence": "0.5"}),
        ):
            body = refused.json()
            assert refused.status_code == 422 and body["error"] == "invalid_min_confidence", body
            assert "single-label" in body["detail"] and "\n" not in body["detail"]
    want = Predictor(path, device="cpu").predict([str(p) for p in test_images])
    assert [g["filename"] for g in got] == [p.name for p in test_images]
    assert [set(g) for g in got] == [{"filename", "labels", "scores"}] * len(got)
    assert [g["labels"] for g in got] == [w["labels"] for w in want]
    for g, w in zip(got, want):
        assert list(g["scores"]) == CLASSES and g["scores"] == pytest.approx(w["scores"], abs=1e-5)
    with pytest.raises(UsageError, match="--min-confidence is for single-label models"):
        create_app(path, ServeSettings(min_confidence=0.5, device="cpu", explain=False))


def test_the_models_own_thresholds_make_the_set(multilabel_ckpt, tmp_path, test_images):
    """The thresholds are the model's, not 0.5: a checkpoint whose thresholds are 0 (blue), 1 (green) and 0.6
    (red), served as a Runner object, puts blue in every set and green only at a score of exactly 1."""
    ck = load_checkpoint(multilabel_ckpt)
    ck["thresholds"] = [0.0, 1.0, 0.6]
    save_checkpoint(ck, str(tmp_path / "t.pt"))
    with _serve(open_model(str(tmp_path / "t.pt"), device="cpu")) as (_, c):
        got = c.post("/predict", files=[("image", (p.name, p.read_bytes())) for p in test_images]).json()
    for g in got["predictions"]:
        s = g["scores"]
        assert g["labels"] == [k for k, t in zip(CLASSES, [0.0, 1.0, 0.6]) if s[k] >= t] and "blue" in g["labels"]


def test_numpy_sigmoid_is_torchs():
    from imgclf.serve.onnx_model import sigmoid

    x = np.array([[-1000.0, -30.0, -1.5, 0.0, 1e-3, 2.0, 30.0, 1000.0]], dtype=np.float32)
    with np.errstate(over="raise"):  # no overflow on the way
        got = sigmoid(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=0)


HOSTILE = ['<img src=x onerror="window.pwned=1">', "b&amp;c", "<b>red</b>"]  # class names as a model may hold them


@pytest.mark.integration
@needs_chromium
def test_the_page_shows_the_set_with_each_score_as_text(multilabel_ckpt, tmp_path, test_images):
    """In a real browser: the web page shows a multi-label model's set and every label with its score, the
    labels as text (names that are markup stay characters: no element made, no script run)."""
    from test_app import _uvicorn

    ck = load_checkpoint(multilabel_ckpt)
    ck["classes"], ck["thresholds"] = HOSTILE, [0.0, 0.0, 1.0]  # the first two in every set, the third never
    save_checkpoint(ck, str(tmp_path / "hostile.pt"))
    app = create_app(str(tmp_path / "hostile.pt"), ServeSettings(warmup=False, explain=False, device="cpu"))
    with _uvicorn(app) as (_, port), chromium_page() as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(test_images[0]))
        page.wait_for_function("document.querySelectorAll('#topk .row').length === 3")
        assert page.text_content("#label") == f"{HOSTILE[0]}, {HOSTILE[1]}"
        names = page.eval_on_selector_all("#topk .topk-label", "els => els.map(e => e.textContent)")
        bold = page.eval_on_selector_all("#topk .topk-label", "els => els.map(e => e.style.fontWeight)")
        assert names == HOSTILE and bold == ["bold", "bold", ""]
        assert page.eval_on_selector_all("#results img, #results b", "els => els.length") == 0
        assert page.evaluate("window.pwned") is None
        assert "labels (multi-label" in page.text_content("#model")
