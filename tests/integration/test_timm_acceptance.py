"""Issue 11's check 6: `--model timm:resnet18` trains, evaluates, exports to every format and serves.

A tiny image folder in tmp_path (32 px, 3 classes), so it needs no ../shared/data; it is here rather than in
unit/ for its length (a ResNet-18 trained, exported five times with verification, and served). Skipped, with
the install line, where timm is not installed."""

from __future__ import annotations

import importlib.util
import io
import json
import time
import warnings

import numpy as np
import pytest

from imgclf.cli.main import main
from imgclf.exporting.export import FORMATS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kernels,  # the exports are verified against eager PyTorch
    pytest.mark.skipif(
        importlib.util.find_spec("timm") is None, reason='timm is an optional extra: pip install -e ".[timm]"'
    ),
]
CLASSES = ["cat", "dog", "fox"]


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_timm_resnet18_trains_evaluates_exports_and_serves(tmp_path, capsys, make_folder, image_of_class):
    data = make_folder(tmp_path / "data", classes=tuple(CLASSES), n=8, n_val=4, n_test=2, size=40)
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--model",
                "timm:resnet18",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--img-size",
                "32",
                "--workers",
                "0",
                "--precision",
                "fp32",
                "--out",
                str(tmp_path / "runs"),
                "--name",
                "r18",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    best = str(tmp_path / "runs" / "r18" / "best.pt")

    ev = _json(capsys, ["evaluate", best, "--data", str(data), "--split", "test", "--workers", "0", "--json", "-q"])
    assert ev["num_images"] == 6 and ev["classes"] == CLASSES and 0.0 <= ev["accuracy"] <= 1.0

    files = {}
    for name, fmt in FORMATS.items():
        out = tmp_path / f"model{fmt.suffix}"
        r = _json(capsys, ["export", best, "--format", name, "--out", str(out), "--json", "-q"])
        assert r["verification"]["ok"], (name, r["verification"])
        files[name] = out
    assert set(files) == set(FORMATS)

    from imgclf.infer.runtime import open_model
    from imgclf.serve import ServeSettings, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2
        from fastapi.testclient import TestClient

    buf = io.BytesIO()
    image_of_class(2, 40, rng=np.random.default_rng(0)).save(buf, "PNG")
    for served in (best, str(files["onnx"])):
        app = create_app(open_model(served, device="cpu"), ServeSettings(max_wait_ms=2))
        with TestClient(app) as client:
            ready = client.get("/ready")
            while ready.status_code == 503 and "warm-up failed" not in ready.text:  # warming up in the background
                time.sleep(0.05)
                ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert client.get("/metadata").json()["model"] == "timm:resnet18"
            r = client.post("/predict", files=[("image", ("fox.png", buf.getvalue(), "image/png"))])
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["label"] in CLASSES
