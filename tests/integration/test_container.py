"""The serving image, built and run with podman: the Containerfile installs imgclf-serve from wheels offline, runs
as a non-root user with a read-only root filesystem and an onnx-int8 export mounted read-only, and answers
/predict on real images (../shared/data/hymenoptera) with the labels `imgclf predict` gives on the same export.

Run with `pytest -m container` (left out of the default run: it builds an image). Needs podman with runc, a base
image with python3 and venv ($IMGCLF_CONTAINER_BASE, default localhost/debian-py:bookworm: see
docs/deployment.md), and the dependency wheels for that image's Python in $IMGCLF_WHEELS (default
deploy/wheels, made by deploy/build-wheels.sh; the test rebuilds imgclf-serve itself from this tree, offline).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
BASE = os.environ.get("IMGCLF_CONTAINER_BASE", "localhost/debian-py:bookworm")
WHEELS = Path(os.environ.get("IMGCLF_WHEELS", ROOT / "deploy" / "wheels"))
# crun fails on this kind of host's cgroups, and podman's default ulimits are refused: runc, explicit limits
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _podman(*args, check=True, timeout=900) -> subprocess.CompletedProcess:
    out = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out


def _skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc)"
    if subprocess.run(["podman", "image", "exists", BASE], capture_output=True).returncode != 0:
        return f"base image {BASE} not found (make it with debootstrap, see docs/deployment.md, or set IMGCLF_CONTAINER_BASE)"
    deps = [w for w in WHEELS.glob("*.whl") if not w.name.startswith("imgclf_serve-")]
    if not deps:
        return f"no dependency wheels in {WHEELS}: run deploy/build-wheels.sh (or set IMGCLF_WHEELS)"
    if not HYMENOPTERA.is_dir():
        return f"real images not found at {HYMENOPTERA}"
    return None


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    """A build context of the tree's Containerfile, the dependency wheels and a fresh imgclf-serve wheel."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    ctx = tmp_path_factory.mktemp("container")
    shutil.copy(ROOT / "Containerfile", ctx / "Containerfile")
    shutil.copy(ROOT / ".containerignore", ctx / ".containerignore")
    shutil.copytree(ROOT / "deploy" / "model", ctx / "deploy" / "model")
    wheels = ctx / "deploy" / "wheels"
    wheels.mkdir()
    for w in WHEELS.glob("*.whl"):
        if not w.name.startswith("imgclf_serve-"):
            shutil.copy(w, wheels)
    # offline: the dependencies come from the folder, setuptools from this environment
    opts = ["--no-index", "--find-links", str(wheels), "--no-build-isolation", "--no-deps"]
    subprocess.run(
        [str(ROOT / "deploy" / "build-wheels.sh"), str(wheels), *opts],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    return ctx


@pytest.fixture(scope="module")
def image(context):
    tag = f"localhost/imgclf-serve-test:{uuid.uuid4().hex[:12]}"
    _podman(
        "build", "--layers=false", "--format", "docker", *ULIMITS, "--build-arg", f"BASE_IMAGE={BASE}", "-t", tag, str(context)
    )  # fmt: skip
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nimage {tag}: {size / 1e6:.0f} MB (base {BASE})")  # shown with pytest -s, for the deployment page
    yield tag
    _podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def export(tiny_best, tmp_path_factory) -> Path:
    from imgclf.exporting.export import export

    out = tmp_path_factory.mktemp("container_model") / "tiny.int8.onnx"
    export(tiny_best, "onnx-int8", out=str(out), calib_images=32, verify_images=24)
    out.chmod(0o444)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def _post_images(url: str, paths: list[Path]) -> dict:
    boundary = "containerboundary"
    body = b""
    for p in paths:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{p.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + p.read_bytes()
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_image_serves_the_export_like_imgclf_predict(image, export):
    from imgclf.infer.predict import Predictor

    name, port = f"imgclf-test-{uuid.uuid4().hex[:12]}", _free_port()
    _podman(
        "run", "-d", "--name", name, *ULIMITS, "--read-only", "--tmpfs", "/tmp",
        "-p", f"127.0.0.1:{port}:8000", "-v", f"{export}:/models/model.onnx:ro", image,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a guard against a container that never starts, not a timing
        while _get(base + "/ready")[0] != 200:
            state = json.loads(_podman("inspect", name).stdout)[0]["State"]
            assert state["Running"], _podman("logs", name, check=False).stderr[-3000:]
            assert time.monotonic() < deadline, _podman("logs", name, check=False).stderr[-3000:]
            time.sleep(0.5)
        assert _get(base + "/health") == (200, b'{"status":"ok"}')

        ants = sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]
        bees = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:4]
        paths = ants + bees
        got = _post_images(base + "/predict?top_k=3", paths)["predictions"]
        expected = Predictor(str(export), device="cpu").predict([str(p) for p in paths], top_k=3)
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        for e, g in zip(expected, got):
            assert g["filename"] == Path(e["path"]).name
            assert abs(g["probability"] - e["probability"]) < 1e-4

        meta = json.loads(_get(base + "/metadata")[1])
        assert meta["format"] == "onnx-int8" and meta["file"] == "model.onnx"
        # the server's user, and the image's health check passing inside the container
        assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert _podman("healthcheck", "run", name, check=False).returncode == 0
    finally:
        _podman("rm", "-f", name, check=False)
