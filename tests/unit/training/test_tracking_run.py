"""--track mlflow on a training run (training/callbacks/tracking.py), read back through MLflow's own client from a
local SQLite store: parameters, per-epoch metrics at their step, the machine and data, the files, the registered
model, a resumed run going on in the same MLflow run, and a failed run ending FAILED."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_argv, train_tiny, usage_error

from imgclf.core.callback import Callback

mlflow = pytest.importorskip("mlflow", reason="MLflow is the optional [mlflow] extra")


def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_a_tracked_run_is_in_the_store_with_everything_a_team_needs(tmp_path, tiny_data):
    res = train_tiny(tmp_path, str(tiny_data), "t", epochs=2, track="mlflow", register="tiny", experiment="e1")
    client = mlflow.MlflowClient(
        store(tmp_path), store(tmp_path)
    )  # the default store: mlflow.db beside the runs folder
    record = json.loads((tmp_path / "runs" / "t" / "tracking.json").read_text())
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert client.get_experiment(run.info.experiment_id).name == "e1"
    p = run.data.params
    assert p["model"] == "test_tiny" and p["epochs"] == "2" and p["lr"] == "0.05" and p["seed"] == "0"
    assert {"epochs", "lr", "model", "track"} <= set(run.data.tags["imgclf.options_set"].split(","))
    assert run.data.tags["imgclf.data_fingerprint"] == res["data_fingerprint"]
    history = client.get_metric_history(run.info.run_id, "val_acc")
    rows = (tmp_path / "runs" / "t" / "metrics.csv").read_text().splitlines()
    assert len(history) == 2 == len(rows) - 1
    assert [m.step for m in history] == [res["steps"] // 2, res["steps"]]  # the optimisation step of each epoch
    assert run.data.metrics["best.accuracy"] == pytest.approx(res["best"]["accuracy"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "report.html", "metrics.csv", "config.yaml", "env.json", "data.json", "model"} <= files
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best.pt"]
    data = json.loads(open(client.download_artifacts(run.info.run_id, "data.json", str(tmp_path))).read())
    assert data["classes"] == ["cat", "dog", "fox"] and data["splits"]["train"]["per_class"] == {
        "cat": 16,
        "dog": 16,
        "fox": 16,
    }
    version = client.get_model_version("tiny", "1")
    assert version.run_id == run.info.run_id and json.loads(version.tags["classes"]) == ["cat", "dog", "fox"]
    assert json.loads(version.tags["preprocess"])["img_size"] == 16


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path, tiny_data):
    steps = train_tiny(tmp_path, str(tiny_data), "r", epochs=1, track="mlflow")["steps"]
    first = json.loads((tmp_path / "runs" / "r" / "tracking.json").read_text())["run_id"]
    train_tiny(tmp_path, str(tiny_data), None, resume=str(tmp_path / "runs" / "r" / "last.pt"), epochs=2)
    client = mlflow.MlflowClient(store(tmp_path), store(tmp_path))
    assert json.loads((tmp_path / "runs" / "r" / "tracking.json").read_text())["run_id"] == first
    assert [m.step for m in client.get_metric_history(first, "epoch")] == [steps, 2 * steps]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1


class Boom(Callback):
    def on_train_epoch_end(self, trainer) -> None:
        raise RuntimeError("boom")


def test_a_run_that_fails_ends_failed_in_the_store(tmp_path, tiny_data):
    with pytest.raises(RuntimeError, match="boom"):
        train_tiny(tmp_path, str(tiny_data), "f", epochs=1, track="mlflow", callbacks=[Boom()])
    client = mlflow.MlflowClient(store(tmp_path), store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert run.info.status == "FAILED"


def test_register_without_track_is_one_line_before_any_work(capsys, tmp_path, tiny_data):
    line = usage_error(capsys, ["train", *tiny_argv(data=tiny_data, out=tmp_path / "runs", register="m")])
    assert "--register m registers the model in MLflow: add --track mlflow" in line
    assert not (tmp_path / "runs").exists()


def test_a_store_down_at_the_start_still_leaves_the_run_id_for_resume(tmp_path, tiny_data, monkeypatch):
    """The store refuses the run's creation once (down at the start): the run goes on, the creation is sent when the
    store answers, and tracking.json then names that run, so a --resume goes on in it (it was not written before)."""
    monkeypatch.setattr("imgclf.core.tracking.RETRY_SECONDS", 0.05)
    create_run, refused = mlflow.MlflowClient.create_run, []

    def down_once(self, *args, **kwargs):
        if not refused:
            refused.append(True)
            raise ConnectionError("the store is down")
        return create_run(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", down_once)
    train_tiny(tmp_path, str(tiny_data), "d", epochs=1, track="mlflow")
    assert refused
    record = json.loads((tmp_path / "runs" / "d" / "tracking.json").read_text())
    train_tiny(tmp_path, str(tiny_data), None, resume=str(tmp_path / "runs" / "d" / "last.pt"), epochs=2)
    client = mlflow.MlflowClient(store(tmp_path), store(tmp_path))
    assert len(client.get_metric_history(record["run_id"], "epoch")) == 2
    assert json.loads((tmp_path / "runs" / "d" / "tracking.json").read_text())["run_id"] == record["run_id"]
