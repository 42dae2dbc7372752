"""The slim serving path (deploy/slim, `imgclf-serve`): an ONNX export served without torch, answering as
`imgclf predict` does; and the deployment files (Containerfile, deploy/k8s.yaml) agreeing with the server."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imgclf.serve import ServeSettings, create_app

pytest.importorskip("onnxruntime")
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src"
TINY_CLASSES = ["cat", "dog", "fox"]  # conftest.tiny_data


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def int8_export(tiny_best, tmp_path_factory) -> str:
    from imgclf.exporting.export import export

    out = tmp_path_factory.mktemp("slim") / "tiny.int8.onnx"
    export(tiny_best, "onnx-int8", out=str(out), calib_images=32, verify_images=24)
    return str(out)


@pytest.fixture(scope="module")
def image_files(image_of_class, tmp_path_factory) -> list[Path]:
    """One PNG per class and a JPEG of another size (reduced-scale decode, resize, crop)."""
    d = tmp_path_factory.mktemp("slim_images")
    rng = np.random.default_rng(3)
    paths = []
    for i, c in enumerate(TINY_CLASSES):
        p = d / f"{c}.png"
        p.write_bytes(_png(image_of_class(i, 16, rng=rng)))
        paths.append(p)
    p = d / "photo.jpg"
    image_of_class(1, (60, 45), rng=rng).save(p, "JPEG", quality=90)
    return paths + [p]


def _slim_modules() -> set[str]:
    """Module names of the files deploy/slim/MODULES puts into imgclf-serve."""
    names = set()
    for line in (ROOT / "deploy" / "slim" / "MODULES").read_text().splitlines():
        line = line.strip()
        if line.endswith(".py") and not line.startswith("#"):
            names.add(line[: -len(".py")].replace("/", ".").removesuffix(".__init__"))
    return names


SERVE_ONNX = textwrap.dedent(
    """
    import json, sys, time
    from fastapi.testclient import TestClient
    from imgclf.serve import ServeSettings, create_app
    import imgclf.serve.main  # the console script's module: what it imports ships too

    def serve(export, images):
        app = create_app(export, ServeSettings(max_wait_ms=1, max_batch_size=4))
        with TestClient(app) as c:
            t0 = time.time()
            while c.get("/ready").status_code != 200:
                assert time.time() - t0 < 60, c.get("/ready").json()  # a guard against a hang, not a timing
                time.sleep(0.02)
            files = [("image", (p, open(p, "rb").read())) for p in images]
            r = c.post("/predict", files=files)
            assert r.status_code == 200, r.text
            unsure = c.post("/predict", files=files[:1], data={"min_confidence": "1"})  # refused (422): multi-label
            unsure = unsure.json()["predictions"][0] if unsure.status_code == 200 else unsure.json()
            explained = c.post("/explain", files=files[:1])
            meta = c.get("/metadata").json()
            head = c.head("/")
            framing = [head.status_code, head.content.decode(), head.headers["x-frame-options"],
                       c.get("/health").headers["content-security-policy"]]
        return {
            "framing": framing,
            "unsure": unsure,
            "explain": [explained.status_code, explained.json(), meta["explain"]],
            "predictions": r.json()["predictions"],
            "task": [meta.get("task"), meta.get("thresholds")],
        }

    # argv: EXPORT IMAGE... [-- EXPORT IMAGE...]: each export served in turn, in this one process
    groups = " ".join(sys.argv[1:]).split(" -- ")
    served = [serve(g.split()[0], g.split()[1:]) for g in groups]
    print(json.dumps({
        "served": served,
        "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")),
        "imgclf": sorted(m for m in sys.modules if m.split(".")[0] == "imgclf"),
    }))
    """
)


def test_serving_an_onnx_export_never_imports_torch(int8_export, image_files, multilabel_onnx, multilabel_csv):
    """A fresh process builds the app for an onnx-int8 export, then for a multi-label ONNX export, and answers
    requests (/predict with and without min_confidence, /explain, /metadata); torch is never imported, and every
    imgclf module it loads is one the slim distribution ships. The multi-label answers are `imgclf predict`'s."""
    from imgclf.infer.predict import Predictor

    ml_images = sorted((multilabel_csv.parent / "img").glob("test_*.png"))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_ONNX,
            int8_export,
            *map(str, image_files),
            "--",
            multilabel_onnx,
            *map(str, ml_images),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == []
    assert set(got["imgclf"]) <= _slim_modules(), set(got["imgclf"]) - _slim_modules()
    single, multi = got["served"]
    assert len(single["predictions"]) == len(image_files) and all("label" in p for p in single["predictions"])
    # min_confidence answers without torch
    assert single["unsure"]["unsure"] is (single["unsure"]["probability"] < 1.0)
    # the multi-label export: the set and scores of `imgclf predict` on the same file, by the thresholds in its
    # metadata (a NumPy sigmoid); min_confidence has no meaning for it and is refused
    want = Predictor(multilabel_onnx, device="cpu").predict([str(p) for p in ml_images])
    assert multi["task"] == ["multilabel", [0.5, 0.4, 0.6]]
    assert [p["labels"] for p in multi["predictions"]] == [w["labels"] for w in want]
    for p, w in zip(multi["predictions"], want):
        assert p["scores"] == pytest.approx(w["scores"], abs=1e-5)
    assert multi["unsure"]["error"] == "invalid_min_confidence", multi["unsure"]
    for served, fmt in ((single, "onnx-int8"), (multi, "(onnx)")):
        # /explain (gradients) says it needs the checkpoint, in a 4xx
        status, body, meta = served["explain"]
        assert status == 400 and body["error"] == "explain_unavailable" and "checkpoint" in body["detail"], body
        assert meta["available"] is False and fmt in meta["reason"]
        # the slim server's page cannot be framed and answers HEAD / (issue 22, defect 10)
        assert served["framing"] == [200, "", "DENY", "frame-ancestors 'none'"], served["framing"]


@pytest.mark.kernels
def test_slim_answers_equal_imgclf_predict(int8_export, image_files):
    """The slim path (NumPy preprocessing, its own session) against `imgclf predict`'s Predictor on the same
    export: the same labels, probabilities within 1e-4 (the same onnxruntime kernels; batches may differ)."""
    from imgclf.infer.predict import Predictor

    expected = Predictor(int8_export, device="cpu").predict([str(p) for p in image_files], top_k=3)
    app = create_app(int8_export, ServeSettings(max_wait_ms=1))
    assert type(app.state.imgclf.model).__name__ == "OnnxModel"
    with TestClient(app) as c:
        t0 = time.time()
        while c.get("/ready").status_code != 200:
            assert time.time() - t0 < 60, c.get("/ready").json()  # a guard against a hang, not a timing
            time.sleep(0.02)
        r = c.post("/predict", files=[("image", (p.name, p.read_bytes())) for p in image_files], data={"top_k": "3"})
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for e, g in zip(expected, got):
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in e["top_k"]]
        for te, tg in zip(e["top_k"], g["top_k"]):
            assert tg["probability"] == pytest.approx(te["probability"], abs=1e-4)


def test_numpy_normalisation_is_eval_transforms(image_files):
    """normalize_batch (the slim path) computes eval_transform's float32 values, to rounding."""
    from imgclf.core.artifact import Preprocess
    from imgclf.data.images import load_image, pil_to_uint8
    from imgclf.data.pipeline import eval_transform
    from imgclf.serve.decode import decode_upload, normalize_batch

    pre = Preprocess(img_size=24, resize=28, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    decoded = [decode_upload(p.read_bytes(), pre, max_pixels=10**7) for p in image_files]
    got = normalize_batch(decoded, pre.mean, pre.std)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == (len(image_files), 3, 24, 24)
    ref = torch.stack([eval_transform(pre)(pil_to_uint8(load_image(str(p), resize=pre.resize))) for p in image_files])
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)


def test_the_slim_path_reads_preprocessing_with_the_one_preprocess(int8_export):
    """The slim server reads an export's preprocessing with core.artifact.Preprocess, as checkpoints, exports and
    predict do (no copy of it): what Preprocess writes reads back field for field, and a damaged one is refused in
    the slim server's words, naming the file."""
    from imgclf.core.artifact import Preprocess
    from imgclf.core.errors import CheckpointError
    from imgclf.serve.onnx_model import OnnxModel

    served = OnnxModel(int8_export, device="cpu", threads=1)
    assert type(served.preprocess) is Preprocess
    assert served.preprocess == Preprocess.from_dict(served.metadata()["preprocess"])
    p = Preprocess(img_size=32, resize=36, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], interpolation="bicubic")
    assert Preprocess.from_dict(p.to_dict(), "x.onnx").to_dict() == p.to_dict()
    with pytest.raises(CheckpointError, match="interpolation 'lanczos'"):
        Preprocess.from_dict({**p.to_dict(), "interpolation": "lanczos"}, "x.onnx")
    with pytest.raises(CheckpointError, match="incomplete imgclf metadata"):
        Preprocess.from_dict({"img_size": 32}, "x.onnx")


BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # as in an install without PyTorch: `import torch` raises ModuleNotFoundError
    from imgclf.serve.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_without_torch_a_checkpoint_is_a_one_line_usage_error(tiny_best):
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, tiny_best, "--port", "0"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "serves ONNX exports only" in lines[0] and "imgclf export" in lines[0], lines


def test_console_script_errors(tmp_path, capsys):
    from imgclf.serve.main import main

    assert main([str(tmp_path / "missing.onnx"), "--port", "0"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([str(tmp_path), "--port", "0"]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert main([str(tmp_path / "bad.onnx"), "--port", "0"]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert main([str(tmp_path / "bad.onnx"), "--port", "70000"]) == 2
    assert "--port must be 0..65535" in capsys.readouterr().err


def _flags(parser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--")}


def test_console_script_has_the_flags_of_imgclf_serve():
    import argparse

    from imgclf.cli.main import build_parser as cli_parser
    from imgclf.serve.main import build_parser

    sub = next(a for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction))
    full, slim = _flags(sub.choices["serve"]), _flags(build_parser())
    # --precision: an export runs in the precision it was exported in
    assert full - slim == {"--precision"} and slim - full == set(), (full - slim, slim - full)


def test_slim_distribution_dependencies_are_the_full_ones():
    """deploy/slim's requirements are lines of the main pyproject, so the two installs never drift apart, and
    torch is not one of them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    full = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    slim = tomllib.loads((ROOT / "deploy" / "slim" / "pyproject.toml").read_text())["project"]
    assert set(slim["dependencies"]) <= set(full["dependencies"])
    assert not any(d.startswith(("torch", "torchvision")) for d in slim["dependencies"])
    assert slim["scripts"]["imgclf-serve"] == full["scripts"]["imgclf-serve"]
    for line in (ROOT / "deploy" / "slim" / "MODULES").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert (SRC / line.strip()).is_file(), line


def test_deployment_files_match_the_server():
    """deploy/k8s.yaml probes /ready and /health on the port the Containerfile serves and exposes; both routes
    exist in the app."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = c["ports"][0]["containerPort"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in (port, c["ports"][0].get("name"))
    assert set(c["resources"]["requests"]) >= {"cpu", "memory"} and set(c["resources"]["limits"]) >= {"memory"}
    sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    svc = kinds["Service"]["spec"]
    assert svc["ports"][0]["targetPort"] in (port, c["ports"][0].get("name"))
    assert svc["selector"].items() <= kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()

    containerfile = (ROOT / "Containerfile").read_text()
    assert re.search(rf"^EXPOSE {port}$", containerfile, re.M)
    assert re.search(rf"IMGCLF_PORT={port}\b", containerfile)
    assert re.search(r"^USER 10001", containerfile, re.M) and sc["runAsUser"] == 10001
    assert "HEALTHCHECK" in containerfile and "/health" in containerfile

    app = create_app(_StubModel(), ServeSettings(warmup=False))
    paths = {r.path for r in app.routes}
    assert {"/ready", "/health", "/predict"} <= paths


class _StubModel:
    """Enough of a served model to build the app's routes (no file, no weights)."""

    path, format, model_name, classes, config, extra = "stub.onnx", "onnx", "stub", ["a", "b"], {}, {}

    def __init__(self):
        from imgclf.core.artifact import Preprocess

        self.preprocess = Preprocess(img_size=8, resize=8, mean=[0.5] * 3, std=[0.5] * 3)

    def metadata(self):
        return {"model": self.model_name}

    def probabilities(self, images):
        return np.full((len(images), 2), 0.5, dtype=np.float32)
