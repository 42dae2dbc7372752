"""--track mlflow against a real MLflow tracking server (`mlflow server`, SQLite backend store, on 127.0.0.1 at a
free port, started here and stopped after): a training run, an evaluation and an export appear with their
parameters, metrics and files, read back through MLflow's own client; the registered model served by
`imgclf serve models:/NAME/1` answers as the checkpoint does; and the server stopped in the middle of a run: the
run finishes, and what happened is said in warnings, not a traceback.

The model is the tiny test model: what is tested is the tracking, not the classifier."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_RUN

from imgclf.core.callback import Callback

mlflow = pytest.importorskip("mlflow", reason="MLflow is the optional [mlflow] extra")

# a real server takes 15-60 s to start on 2 cores: in the heavy set (.ci/run runs it), not the default run
pytestmark = [pytest.mark.integration, pytest.mark.heavy]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except (urllib.error.URLError, ConnectionError) as e:
        return getattr(e, "code", 0), b""


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's workers are in its process group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with a SQLite backend store and local artifacts; yields (url, process)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root}/store.db", "--artifacts-destination", str(root / "artifacts")]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while get(url + "/health")[0] != 200:
        if proc.poll() is not None or time.time() - t0 > 240:
            log.seek(0)
            stop(proc)
            pytest.fail(f"mlflow server did not start: {log.read()[-2000:]}")
        time.sleep(0.5)
    yield url, proc
    stop(proc)
    log.close()


@pytest.fixture()
def quick_failures(monkeypatch):
    """What `imgclf`'s console logging sets for its own process (core/logs.py), here for the in-process calls."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setattr("imgclf.core.tracking.FINISH_SECONDS", 120.0)
    monkeypatch.setattr("imgclf.core.tracking.RETRY_SECONDS", 1.0)


def multipart(path: Path) -> tuple[bytes, str]:
    b = "b0undary"
    head = f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
    body = (head + "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def serve_answer(weights: str, uri: str, image: Path, cache: Path) -> dict:
    """`imgclf serve WEIGHTS --tracking-uri URI` as a process: its answer for `image`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(cache))
    cmd = [sys.executable, "-m", "imgclf", "serve", weights, "--port", "0", "--tracking-uri", uri, "--no-explain"]
    err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        if not m:
            proc.wait(30)
            err.seek(0)
            pytest.fail(f"no URL on the server's first line; stderr: {err.read()[-2000:]}")
        url = f"http://127.0.0.1:{m.group(1)}"
        t0 = time.time()
        while get(url + "/ready")[0] != 200:
            assert proc.poll() is None and time.time() - t0 < 120
            time.sleep(0.2)
        status, raw = get(url + "/predict", *multipart(image))
        assert status == 200, raw
        return json.loads(raw)["predictions"][0]
    finally:
        stop(proc)
        err.close()


def test_train_evaluate_and_export_are_in_the_server_and_the_registered_model_serves(
    server, tmp_path, tiny_data, quick_failures, monkeypatch
):
    import imgclf
    from imgclf.cli.main import main

    url, _ = server
    monkeypatch.chdir(tmp_path)  # nothing may land in a default store here (./mlflow.db)
    res = imgclf.train(
        **TINY_RUN,
        data=str(tiny_data),
        out=str(tmp_path / "runs"),
        name="srv",
        epochs=2,
        track="mlflow",
        tracking_uri=url,
        register="tiny-srv",
    )
    best = str(tmp_path / "runs" / "srv" / "best.pt")
    assert main(["evaluate", best, "--track", "mlflow", "--tracking-uri", url, "-q"]) == 0
    assert main(["export", best, "--format", "onnx", "--track", "mlflow", "--tracking-uri", url, "-q"]) == 0
    client = mlflow.MlflowClient(url, url)
    runs = {
        r.data.tags["imgclf.command"]: r
        for r in client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    }
    assert set(runs) == {"train", "evaluate", "export"}
    train = runs["train"]
    assert train.info.status == "FINISHED" and train.data.params["model"] == "test_tiny"
    assert len(client.get_metric_history(train.info.run_id, "val_acc")) == 2
    assert train.data.metrics["best.accuracy"] == pytest.approx(res["best"]["accuracy"])
    assert {"best.pt"} == {Path(a.path).name for a in client.list_artifacts(train.info.run_id, "model")}
    for kind in ("evaluate", "export"):
        assert runs[kind].data.tags["mlflow.parentRunId"] == train.info.run_id
    assert "accuracy" in runs["evaluate"].data.metrics
    assert "eval.json" in {a.path for a in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert [a.path for a in client.list_artifacts(runs["export"].info.run_id, "model")] == ["model/best.onnx"]
    image = next((tiny_data / "val" / "dog").iterdir())
    registered = serve_answer("models:/tiny-srv/1", url, image, tmp_path / "cache")
    local = serve_answer(best, url, image, tmp_path / "cache")
    assert registered["label"] == local["label"]
    assert registered["probability"] == pytest.approx(local["probability"], abs=1e-6)
    assert client.get_model_version("tiny-srv", "1").run_id == train.info.run_id
    assert not (tmp_path / "mlflow.db").exists()


class StopServer(Callback):
    """Stops the tracking server after the first epoch."""

    def __init__(self, proc):
        self.proc = proc

    def on_train_epoch_end(self, trainer) -> None:
        if trainer.state.epoch == 1:
            stop(self.proc)


def test_a_server_stopped_in_the_middle_of_a_run_costs_the_run_nothing(
    server, tmp_path, tiny_data, quick_failures, monkeypatch
):
    """The last test of the module: it stops the module's server."""
    import imgclf

    url, proc = server
    monkeypatch.setattr("imgclf.core.tracking.FINISH_SECONDS", 5.0)  # nothing will answer: do not wait long
    res = imgclf.train(
        **TINY_RUN,
        data=str(tiny_data),
        out=str(tmp_path / "runs"),
        name="down",
        epochs=3,
        track="mlflow",
        tracking_uri=url,
        callbacks=[StopServer(proc)],
    )
    assert res["epochs"] == 3 and (tmp_path / "runs" / "down" / "best.pt").exists()
    log = (tmp_path / "runs" / "down" / "train.log").read_text()
    said = [line for line in log.splitlines() if "MLflow:" in line and ("failed" in line or "not sent" in line)]
    assert len(said) == 2, log
    assert "failed" in said[0] and "the run goes on" in said[0]
    assert "not sent" in said[1] and "the run's own folder holds its metrics and files" in said[1]
    assert "Traceback" not in log
