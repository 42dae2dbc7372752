"""core/tracking.py: the MLflow tracker against a real local store (SQLite), and against a store that does not
answer: the tracked work never waits for it and never fails for it."""

from __future__ import annotations

import socket
import time

import pytest

from imgclf.core.errors import UsageError
from imgclf.core.tracking import Tracker, check_tracking, default_uri, fetch_model, flat_params, numbers

mlflow = pytest.importorskip("mlflow", reason="MLflow is the optional [mlflow] extra")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_run_reaches_the_store_with_its_parameters_metrics_tags_and_files(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(uri, "exp")
    run_id = t.start("a run", tags={"who": "test"})
    assert run_id
    t.log_params({"lr": 0.1, "nested": {"a": [1, 2]}, "name": "x"})
    for step, acc in ((10, 0.5), (20, 0.75)):
        t.log_metrics({"val_acc": acc, "text": "left out", "flag": True}, step)
    (tmp_path / "f.txt").write_text("hello")
    t.log_artifact(str(tmp_path / "f.txt"), "files")
    assert t.finish() is True
    c = mlflow.MlflowClient(uri, uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a run"
    assert run.data.params == {"lr": "0.1", "nested.a": "[1, 2]", "name": "x"}
    assert run.data.tags["who"] == "test"
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "val_acc")] == [(10, 0.5), (20, 0.75)]
    assert set(run.data.metrics) == {"val_acc"}
    assert [a.path for a in c.list_artifacts(run_id, "files")] == ["files/f.txt"]
    assert c.get_experiment(run.info.experiment_id).artifact_location == str(tmp_path / "mlartifacts")


def test_a_store_that_does_not_answer_costs_the_work_nothing_and_is_said(tmp_path, monkeypatch):
    """An unreachable server: start returns at once with no run, the calls return at once, and finish says in a
    warning how many calls were not sent; nothing raises."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    said = []
    t = Tracker(f"http://127.0.0.1:{closed_port()}", None, warn=said.append)
    assert t.start("r", wait=5) is None
    began = time.perf_counter()
    for step in range(50):
        t.log_metrics({"loss": 1.0 / (step + 1)}, step)
    assert time.perf_counter() - began < 1.0  # queued, never sent from the caller's thread
    assert t.finish(timeout=3) is False
    assert said[0].startswith("MLflow: tracking to http://127.0.0.1:") and "the run goes on" in said[0]
    assert "not sent" in said[-1] and len(said) == 2


def test_calls_made_while_the_store_was_down_are_sent_in_order_when_it_answers(tmp_path, monkeypatch):
    """The store comes back (here: its first calls fail): what was queued meanwhile arrives, in order."""
    monkeypatch.setattr("imgclf.core.tracking.RETRY_SECONDS", 0.05)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    said = []
    t = Tracker(uri, "exp", warn=said.append)
    t.start("r")
    real, failures = t._client.log_batch, [3]

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("down")
        return real(*args, **kwargs)

    t._client.log_batch = flaky
    for step in range(5):
        t.log_metrics({"m": float(step)}, step)
    assert t.finish(timeout=60) is True
    history = mlflow.MlflowClient(uri, uri).get_metric_history(t.run_id or "", "m")
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(5)]
    assert len(said) == 1 and "ConnectionError: down" in said[0]


def test_tracking_options_are_checked_before_any_work():
    with pytest.raises(UsageError, match="add --track mlflow"):
        check_tracking("none", None, "my-model")
    with pytest.raises(UsageError, match="--tracking-uri"):
        check_tracking("none", "http://127.0.0.1:5000", None)
    with pytest.raises(UsageError, match="not a tracking store"):
        check_tracking("mlflow", "ftp://somewhere", None)
    check_tracking("mlflow", "http://127.0.0.1:5000", "m")


def test_the_default_store_is_beside_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_uri(str(tmp_path / "runs")) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_uri(str(tmp_path / "runs")) == "http://127.0.0.1:5000"


def test_nested_values_become_dotted_parameters_and_numeric_metrics():
    assert flat_params({"a": {"b": 1, "c": None}, "d": "x"}) == {"a.b": "1", "a.c": "null", "d": "x"}
    assert numbers({"a": {"b": 1, "c": "x"}, "d": True, "e": 2.5, "f": [1]}) == {"a.b": 1.0, "e": 2.5}


def test_an_unknown_registered_model_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"models:/nothing/1: not found in the MLflow store"):
        fetch_model("models:/nothing/1", f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "cache"))
