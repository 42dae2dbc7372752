"""Issue 25, check 3: an ONNX export of a checkpoint with out-of-distribution thresholds rejects the images the
checkpoint rejects, whoever runs it: `imgclf predict` (the runtime's OnnxRunner), `imgclf serve` (the app) and
the slim server in a fresh process without torch, for each score (knn from the graph's "knn" output)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import noise_images, with_ood

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2, whichever is installed
    from fastapi.testclient import TestClient

from imgclf.core import ood
from imgclf.infer.predict import Predictor, expand_paths
from imgclf.serve import ServeSettings, create_app

pytest.importorskip("onnxruntime")

SRC = Path(__file__).resolve().parents[3] / "src"
QUICK = dict(max_wait_ms=1, warmup=False, explain=False, device="cpu")


@pytest.fixture(scope="module")
def exported(tiny_best, tiny_data, tmp_path_factory) -> tuple[str, str]:
    """(the checkpoint with a bank and thresholds, its ONNX export by `imgclf export --format onnx`)."""
    from imgclf.exporting.export import export

    d = tmp_path_factory.mktemp("everywhere")
    ckpt = with_ood(tiny_best, expand_paths([tiny_data / "train"]), expand_paths([tiny_data / "val"]), d / "best.pt")
    export(ckpt, "onnx", out=str(d / "best.onnx"), verify_images=8)
    return ckpt, str(d / "best.onnx")


@pytest.fixture(scope="module")
def images(tiny_data, tmp_path_factory) -> list[str]:
    """Three images of uniform noise and the tiny data's test images."""
    return noise_images(tmp_path_factory.mktemp("everywhere_noise"), 3, seed=2) + expand_paths([tiny_data / "test"])


def _served(weights: str, images: list[str], score: str) -> list[dict]:
    with TestClient(create_app(weights, ServeSettings(**QUICK))) as c:
        t0 = time.time()
        while c.get("/ready").status_code != 200:
            assert time.time() - t0 < 60  # a guard against a hang, not a timing
            time.sleep(0.02)
        files = [("image", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in images]
        r = c.post("/predict", files=files, data={"reject": "ood", "ood_score": score})
        assert r.status_code == 200, r.text
        return r.json()["predictions"]


SLIM = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from imgclf.serve import ServeSettings, create_app

    export, images = sys.argv[1], sys.argv[2:]
    files = [("image", (p, open(p, "rb").read())) for p in images]
    app = create_app(export, ServeSettings(max_wait_ms=1, warmup=False))
    answers = {}
    with TestClient(app) as c:
        for score in ("msp", "energy", "knn"):
            r = c.post("/predict", files=files, params={"reject": "ood", "ood_score": score})
            answers[score] = [[p["unknown"], p["ood"]["value"]] for p in r.json()["predictions"]]
        meta = c.get("/metadata").json()["ood"]
    print(json.dumps({"answers": answers, "thresholds": meta["thresholds"],
                      "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
    """
)


def test_predict_serve_and_the_slim_server_reject_what_the_checkpoint_does(exported, images):
    ckpt, onnx = exported
    slim = subprocess.run(
        [sys.executable, "-c", SLIM, onnx, *images],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert slim.returncode == 0, slim.stderr
    slim = json.loads(slim.stdout.strip().splitlines()[-1])
    assert slim["torch"] == []  # the slim path: onnxruntime and NumPy only
    assert set(slim["thresholds"]) == set(ood.SCORES)  # the export has the knn output, so its threshold too
    for score in ood.SCORES:
        # knn is sqrt(2 - 2 cos): near a distance of 0 a float32 rounding e of the cosine moves it by sqrt(2 e)
        atol = 1e-3 if score == "knn" else 1e-5
        want = Predictor(ckpt, device="cpu", reject="ood", ood_score=score).predict(images)
        flags = [w["unknown"] for w in want]
        assert flags[:3] == [True] * 3 or score != "knn", (score, flags)  # noise is far from every training image
        for who, rows in (
            ("predict", Predictor(onnx, device="cpu", reject="ood", ood_score=score).predict(images)),
            ("serve checkpoint", _served(ckpt, images, score)),
            ("serve onnx", _served(onnx, images, score)),
        ):
            assert [r["unknown"] for r in rows] == flags, (score, who)
            values = [r["ood"]["value"] for r in rows]
            np.testing.assert_allclose(values, [w["ood"]["value"] for w in want], rtol=1e-4, atol=atol)
        assert [a[0] for a in slim["answers"][score]] == flags, (score, "slim")
        values = [a[1] for a in slim["answers"][score]]
        np.testing.assert_allclose(values, [w["ood"]["value"] for w in want], rtol=1e-4, atol=atol)


def test_tta_around_an_export_has_no_knn(exported, images):
    """--tta around an ONNX export runs the file's logits per view only: energy by default, knn refused."""
    from imgclf.core.errors import UsageError

    _, onnx = exported
    p = Predictor(onnx, device="cpu", reject="ood", tta="flip")
    assert p.ood_score == "energy" and set(p.ood["thresholds"]) == {"msp", "energy"}
    assert {r["ood"]["score"] for r in p.predict(images[:2])} == {"energy"}
    with pytest.raises(UsageError, match="--ood-score knn: this model has no knn threshold"):
        Predictor(onnx, device="cpu", reject="ood", ood_score="knn", tta="flip")
