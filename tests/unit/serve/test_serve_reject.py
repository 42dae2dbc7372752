"""The server's "none of these" (issue 25): a request's reject=ood / ood_score (query or form), the server's
--reject / --ood-score default and a request's reject=none, the answers of `imgclf predict --reject ood` row for
row, 422 for a value the model cannot take, the start-up refusal, /metadata, the OpenAPI fields, the metrics and
the web page; and the slim ONNX model's rule from its metadata (no torch in OnnxModel)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium_page, needs_chromium, noise_images, usage_error, with_ood, without_ood
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2, whichever is installed
    from fastapi.testclient import TestClient

from imgclf.core import ood
from imgclf.core.errors import UsageError
from imgclf.core.shared_options import OOD_ACCEPT, OOD_BANK, OOD_SCORE
from imgclf.infer.predict import Predictor, expand_paths
from imgclf.infer.runtime import open_model
from imgclf.serve import ServeSettings, create_app
from imgclf.serve.onnx_model import OnnxModel
from imgclf.serve.routes import page

QUICK = dict(max_wait_ms=1, warmup=False, explain=False)
SRC = str(Path(__file__).resolve().parents[3] / "src")


@pytest.fixture(scope="module")
def ood_ckpt(tiny_best, tiny_data, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("serve_ood") / "best.pt"
    return with_ood(tiny_best, expand_paths([tiny_data / "train"]), expand_paths([tiny_data / "val"]), out)


@pytest.fixture(scope="module")
def no_record(tiny_best, tmp_path_factory) -> str:
    """The tiny checkpoint without an out-of-distribution entry (one from before training fitted it)."""
    return without_ood(tiny_best, tmp_path_factory.mktemp("serve_no_ood") / "old.pt")


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory) -> list:
    """Two images of uniform noise (far from every training image), then the tiny data's test images."""
    return noise_images(tmp_path_factory.mktemp("serve_noise"), 2, seed=1) + expand_paths([tiny_data / "test"])


def _upload(paths) -> list:
    return [("image", (str(p).rsplit("/", 1)[-1], open(p, "rb").read(), "image/png")) for p in paths]


def _ready(c: TestClient) -> TestClient:
    t0 = time.time()
    while c.get("/ready").status_code != 200:
        assert time.time() - t0 < 60, c.get("/ready").json()  # a guard against a hang, not a timing
        time.sleep(0.02)
    return c


def _refused(r, code: str, words: str) -> None:
    assert r.status_code == 422, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and words in body["detail"] and "\n" not in body["detail"], body


@pytest.fixture(scope="module")
def client(ood_ckpt):
    with TestClient(create_app(open_model(ood_ckpt, device="cpu"), ServeSettings(**QUICK))) as c:
        yield _ready(c)


def _same_as_predict(rows: list[dict], want: list[dict]) -> None:
    assert [r["unknown"] for r in rows] == [w["unknown"] for w in want]
    assert [r["label"] for r in rows] == [w["label"] for w in want]
    assert [r["ood"]["score"] for r in rows] == [w["ood"]["score"] for w in want]
    np.testing.assert_allclose([r["ood"]["value"] for r in rows], [w["ood"]["value"] for w in want], rtol=1e-5)


def test_a_request_rejects_as_predict_does(client, ood_ckpt, files):
    plain = client.post("/predict", files=_upload(files)).json()["predictions"]
    assert "unknown" not in plain[0] and "ood" not in plain[0]  # no rejection unless asked
    want = Predictor(ood_ckpt, device="cpu", reject="ood").predict(files)
    assert [w["unknown"] for w in want[:2]] == [True, True] and not any(w["unknown"] for w in want[2:])
    query = client.post("/predict", files=_upload(files), params={"reject": "ood"}).json()["predictions"]
    _same_as_predict(query, want)
    assert query[0]["label"] is None and query[0]["top_k"] == plain[0]["top_k"]  # the top classes still shown
    form = client.post("/predict", files=_upload(files), data={"reject": "ood", "ood_score": "energy"}).json()
    _same_as_predict(
        form["predictions"], Predictor(ood_ckpt, device="cpu", reject="ood", ood_score="energy").predict(files)
    )
    metrics = client.get("/metrics").text
    assert 'imgclf_images_unknown_total{score="knn"} 2.0' in metrics


def test_the_servers_default_and_a_requests_override(ood_ckpt, files):
    settings = ServeSettings(**QUICK, reject="ood", ood_score="msp")
    with TestClient(create_app(open_model(ood_ckpt, device="cpu"), settings)) as c:
        _ready(c)
        default = c.post("/predict", files=_upload(files)).json()["predictions"]
        assert {r["ood"]["score"] for r in default} == {"msp"}
        _same_as_predict(default, Predictor(ood_ckpt, device="cpu", reject="ood", ood_score="msp").predict(files))
        knn = c.post("/predict", files=_upload(files), params={"ood_score": "knn"}).json()["predictions"]
        assert {r["ood"]["score"] for r in knn} == {"knn"}
        off = c.post("/predict", files=_upload(files), data={"reject": "none"}).json()["predictions"]
        assert all("unknown" not in r and r["label"] is not None for r in off)
        meta = c.get("/metadata").json()
    assert meta["serve"]["reject"] == "ood" and meta["serve"]["ood_score"] == "msp"
    assert set(meta["ood"]["thresholds"]) == {"msp", "energy", "knn"} and meta["ood"]["k"] == 1


def test_values_the_model_cannot_take_are_422(client, no_record, files):
    f = _upload(files[:1])
    _refused(client.post("/predict", files=f, params={"reject": "maybe"}), "invalid_reject", "the only rejection")
    _refused(client.post("/predict", files=f, data={"reject": "ood", "ood_score": "x"}), "invalid_ood_score", "msp")
    _refused(client.post("/predict", files=f, params={"ood_score": "knn"}), "invalid_ood_score", "needs reject ood")
    _refused(
        client.post("/predict", files=f, data={"reject": "none", "ood_score": "knn"}), "invalid_ood_score", "needs"
    )
    with TestClient(create_app(open_model(no_record, device="cpu"), ServeSettings(**QUICK))) as c:
        r = _ready(c).post("/predict", files=f, params={"reject": "ood"})
        _refused(r, "invalid_reject", "no out-of-distribution thresholds")
        assert "ood" not in c.get("/metadata").json()
    assert client.post("/predict", files=f).status_code == 200  # refusals leave the server as it was


def test_start_up_refuses_a_default_the_model_cannot_take(no_record, ood_ckpt, capsys):
    with pytest.raises(UsageError, match="--reject ood: this model has no out-of-distribution thresholds"):
        create_app(open_model(no_record, device="cpu"), ServeSettings(**QUICK, reject="ood"))
    with pytest.raises(UsageError, match="--ood-score energy needs --reject ood"):
        create_app(open_model(ood_ckpt, device="cpu"), ServeSettings(**QUICK, ood_score="energy"))
    assert "no out-of-distribution" in usage_error(capsys, ["serve", no_record, "--reject", "ood", "--port", "0"])
    assert "invalid choice" in usage_error(capsys, ["serve", ood_ckpt, "--reject", "ood", "--ood-score", "far"])


def test_openapi_and_the_page(client):
    spec = client.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert {"reject", "ood_score", "min_confidence"} <= params
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["ood_score"]["enum"] == list(ood.SCORES)
    assert {"unknown", "ood"} <= set(spec["components"]["schemas"]["Prediction"]["properties"])
    html = page()
    assert client.get("/").text == html
    # "none of these" with the score's name, value and threshold, written as text (never as markup)
    assert '"none of these"' in html and 'o.score + " score "' in html and "innerHTML" not in html
    assert '"&reject=" + ($("reject").checked ? "ood" : "none")' in html


def test_the_score_names_agree_and_imgclf_serve_parses_before_numpy_loads():
    """--ood-score's choices (and --ood-bank's and --ood-accept's defaults) are core/ood's, written in
    core/shared_options without importing core/ood: the slim console script builds its parser before it caps
    malloc's arenas, which must come before NumPy loads."""
    assert OOD_SCORE.choices == ood.SCORES
    assert (OOD_BANK.default, OOD_ACCEPT.default) == (ood.DEFAULT_BANK, ood.DEFAULT_ACCEPT)
    code = "import sys, imgclf.serve.main; print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


@pytest.mark.integration
@needs_chromium
def test_the_page_says_none_of_these_with_the_score(ood_ckpt, files):
    """In a real browser, a server rejecting by default: noise is "none of these" with the score, its value and
    threshold; a test image keeps its label; unticking the box asks reject=none."""
    from test_app import _uvicorn

    app = create_app(ood_ckpt, ServeSettings(warmup=False, explain=False, device="cpu", reject="ood"))
    label = "document.getElementById('label').textContent"
    with _uvicorn(app) as (_, port), chromium_page() as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('oodrow').style.display === 'flex'")
        assert page.is_checked("#reject")  # the server's default
        page.set_input_files("#file", files[0])
        page.wait_for_function(f"{label} === 'none of these'")
        assert page.get_attribute("#label", "class") == "unknown"
        assert re.fullmatch(
            r"knn score [0-9.]+ is above the threshold [0-9.e-]+: unlike the images the model "
            r"was trained on",
            page.text_content("#ood"),
        ), page.text_content("#ood")
        assert len(page.locator(".topk-label").all_inner_texts()) == 3  # the probabilities still shown
        page.set_input_files("#file", files[2])
        page.wait_for_function(f"{label}.length > 0 && {label} !== 'none of these'")
        assert "is within the threshold" in page.text_content("#ood")
        page.uncheck("#reject")
        page.set_input_files("#file", files[1])
        page.wait_for_function(f"{label}.length > 0")
        assert page.text_content("#label") != "none of these" and page.text_content("#ood") == ""


# --------------------------------------------------------------------------------------------- the slim model


def _with_record(onnx_path: str, record: dict, out) -> str:
    """An ONNX export whose imgclf metadata gains `record` as "ood" (an export without the feature outputs)."""
    import onnx

    m = onnx.load(onnx_path)
    for p in m.metadata_props:
        if p.key == "imgclf":
            p.value = json.dumps({**json.loads(p.value), "ood": record})
    onnx.save(m, str(out))
    return str(out)


@pytest.fixture(scope="module")
def ml_images(multilabel_csv) -> list[str]:
    return [str(p) for p in sorted((multilabel_csv.parent / "img").glob("test_*.png"))]


@pytest.fixture(scope="module")
def onnx_with_record(multilabel_onnx, ml_images, tmp_path_factory) -> str:
    """The multi-label ONNX export (logits only) with a record in its metadata whose energy threshold lies in
    the middle of its test images' energies (some unknown, some not), and a knn threshold the file cannot use
    (no "knn" output)."""
    import torch

    runner = open_model(multilabel_onnx, device="cpu")
    p = Predictor(multilabel_onnx, device="cpu")
    _, scores = runner.ood_scores(torch.stack([p.transform(p.load_uint8(f)) for f in ml_images]))
    thresholds = {"msp": 0.5, "energy": float(np.median(scores["energy"])), "knn": 0.5}
    record = ood.fit_record({}, accept=0.95, temperature=1.0) | {"thresholds": thresholds}
    return _with_record(multilabel_onnx, record, tmp_path_factory.mktemp("serve_ood_onnx") / "ml.onnx")


def test_the_slim_model_applies_the_metadatas_rule(onnx_with_record, ml_images):
    model = OnnxModel(onnx_with_record)
    assert set(model.ood["thresholds"]) == {"msp", "energy"}  # no "knn" output: no knn threshold
    assert model.metadata()["ood"] == model.ood
    images = [np.asarray(Image.open(f).convert("RGB")) for f in ml_images]
    probs, scores = model.scored(images)
    np.testing.assert_allclose(probs, model.probabilities(images), rtol=1e-6)
    want = Predictor(onnx_with_record, device="cpu", reject="ood").predict(ml_images)  # the runtime's OnnxRunner
    assert {w["ood"]["score"] for w in want} == {"energy"}  # knn is not this file's: energy by default
    assert 0 < sum(w["unknown"] for w in want) < len(want)
    np.testing.assert_allclose(scores["energy"], [w["ood"]["value"] for w in want], rtol=1e-5)
    with TestClient(create_app(onnx_with_record, ServeSettings(**QUICK, reject="ood"))) as c:
        rows = _ready(c).post("/predict", files=_upload(ml_images)).json()["predictions"]
        assert [r["unknown"] for r in rows] == [w["unknown"] for w in want]
        assert [r["labels"] for r in rows] == [w["labels"] for w in want]  # [] where unknown
        np.testing.assert_allclose([r["ood"]["value"] for r in rows], [w["ood"]["value"] for w in want], rtol=1e-5)
        r = c.post("/predict", files=_upload(ml_images[:1]), params={"ood_score": "knn"})
        _refused(r, "invalid_ood_score", "no knn threshold")
    with pytest.raises(UsageError, match="no knn threshold"):
        Predictor(onnx_with_record, device="cpu", reject="ood", ood_score="knn")
