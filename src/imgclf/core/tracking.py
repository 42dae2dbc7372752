"""Experiment tracking in MLflow (`--track mlflow`): a run's parameters, metrics, tags and files sent to a tracking
store, a model registered there, and a registered model (`models:/NAME/VERSION`) brought back as a local file.

The store: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else an SQLite file beside the runs folder
(`sqlite:///<the folder holding runs/>/mlflow.db`, MLflow's own default when imgclf runs where the runs folder
is, so `mlflow ui` opened there shows it), with the files under `mlartifacts/` next to it.

Tracking never stops the work it tracks: every call goes through one background thread (`Tracker`), so a slow or
unreachable server never holds up a training step. A call that fails is kept and tried again later, in order;
the first failure is one warning. `finish` waits a bounded time for what is left, then says in one warning how
many calls were not sent (the run's own folder still holds everything: metrics.csv, results.json, best.pt).

Torch-free. MLflow is an optional extra (`pip install 'imgclf[mlflow]'`), imported when tracking starts: it takes
about a second to import and most runs do not track.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from imgclf.core.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "imgclf"
INSTALL = "pip install 'imgclf[mlflow]'"
MODEL_URI_SCHEMES = ("models:/", "runs:/")
RETRY_SECONDS = 5.0  # a failed call is tried again after this long
FINISH_SECONDS = 30.0  # how long `finish` waits for the store while it does not answer (it waits as long as it does)


def import_mlflow():
    try:
        import mlflow  # noqa: PLC0415 - optional, and a second to import: only when tracking starts
    except ImportError:
        raise UsageError(f"--track mlflow needs MLflow, which is not installed: {INSTALL}") from None
    return mlflow


def default_uri(out: str) -> str:
    """The store when no --tracking-uri is given: $MLFLOW_TRACKING_URI, else mlflow.db beside the runs folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(Path(out).resolve().parent / "mlflow.db")


def check_uri(uri: str) -> None:
    """Before any work: a URI MLflow can open (a scheme it knows, or a local path)."""
    known = ("http://", "https://", "sqlite:///", "file:", "databricks", "postgresql", "mysql", "mssql")
    if not uri.startswith(known) and "://" in uri:
        raise UsageError(
            f"--tracking-uri {uri}: not a tracking store MLflow opens (http://HOST:PORT or sqlite:///FILE)"
        )


def check_tracking(track: str, uri: str | None, register: str | None = None) -> None:
    """--track's options, checked before any work: MLflow installed, a store it opens, --register with --track."""
    if track == "none":
        if register:
            raise UsageError(f"--register {register} registers the model in MLflow: add --track mlflow")
        if uri:
            raise UsageError(f"--tracking-uri {uri} is where --track mlflow logs to: add --track mlflow, or drop it")
        return
    if uri:
        check_uri(uri)
    import_mlflow()


def local_artifacts(uri: str) -> str | None:
    """Where a local SQLite store keeps its runs' files (mlartifacts/ beside the database); None for a server,
    which decides for itself."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


def flat_params(values: dict, prefix: str = "") -> dict[str, str]:
    """A nested dict as MLflow parameters: dotted keys, values as text (MLflow keeps at most 6,000 characters)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:6000]
    return out


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a (nested) dict as MLflow metrics: dotted keys; booleans, text and lists left out."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class Tracker:
    """One MLflow run, written by a background thread. Calls are queued in order and never raise; `finish` ends
    the run. `run_id` is known once the run exists in the store (at once when the store answers)."""

    def __init__(self, uri: str, experiment: str | None, *, warn: Callable[[str], None] | None = None):
        self.uri, self.experiment = uri, experiment or DEFAULT_EXPERIMENT
        self.warn = warn or log.warning
        self.run_id: str | None = None
        self.failed_once = False
        self._mlflow = import_mlflow()
        # the registry too: MlflowClient otherwise registers in the default store (./mlflow.db), not `uri`
        self._client = self._mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._calls: queue.Queue = queue.Queue()
        self._pending: deque = deque()  # calls that failed, tried again in order before any new one
        self._progress = time.monotonic()  # when the store last took a call
        self._thread = threading.Thread(target=self._work, name="imgclf-mlflow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the calls (queued; never raise)
    def start(self, run_name: str, *, tags: dict | None = None, run_id: str | None = None, wait: float = 10.0):
        """Create the run (or take up `run_id`'s again, a resumed run's); waits up to `wait` seconds so that the
        run id can be recorded, and goes on without it when the store does not answer."""
        done = threading.Event()
        self._calls.put((self._start, (run_name, dict(tags or {}), run_id, done)))
        done.wait(wait)
        return self.run_id

    def log_params(self, params: dict) -> None:
        items = list(flat_params(params).items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self._put("log_params", dict(items[i : i + 100]))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if metrics:
            self._put("log_metrics", numbers(metrics), step, int(time.time() * 1000))

    def set_tags(self, tags: dict) -> None:
        self._put("set_tags", {k: str(v)[:5000] for k, v in tags.items()})

    def log_artifact(self, path: str, folder: str | None = None) -> None:
        if os.path.exists(path):
            self._put("log_artifact", path, folder)

    def log_dict(self, value: dict, name: str) -> None:
        self._put("log_dict", value, name)

    def register(self, name: str, folder: str, tags: dict) -> None:
        """Register the run's files under `folder` as a new version of the registered model `name`."""
        self._put("register", name, folder, {k: str(v) for k, v in tags.items()})

    def finish(self, status: str = "FINISHED", timeout: float | None = None) -> bool:
        """End the run with `status` (FINISHED, FAILED or KILLED); True when everything reached the store. Waits
        while the store takes calls (a large file, a registration), and gives up once it has taken none for
        `timeout` seconds (FINISH_SECONDS)."""
        timeout = FINISH_SECONDS if timeout is None else timeout
        self._put("end", status)
        self._calls.put(None)
        self._progress = time.monotonic()
        while self._thread.is_alive() and time.monotonic() - self._progress < timeout:
            self._thread.join(min(1.0, timeout))
        left = len(self._pending) + self._calls.qsize()
        if self._thread.is_alive() or left:
            self.warn(
                f"MLflow: {max(left, 1)} tracking call(s) not sent to {self.uri}: the store took none in "
                f"{timeout:.0f} s; the run's own folder holds its metrics and files"
            )
            return False
        return True

    # ------------------------------------------------------------------ the thread
    def _put(self, op: str, *args) -> None:
        self._calls.put((self._op, (op, *args)))

    def _work(self) -> None:
        while True:
            try:
                item = self._calls.get(timeout=RETRY_SECONDS if self._pending else None)
            except queue.Empty:
                item = False  # nothing new: time to try the pending calls again
            if item is not False and item is not None:
                self._pending.append(item)
            self._drain()
            if item is None and not self._pending:
                return
            if item is None:  # finishing: keep trying until finish() stops waiting (a daemon thread)
                time.sleep(RETRY_SECONDS)
                self._calls.put(None)

    def _drain(self) -> None:
        while self._pending:
            fn, args = self._pending[0]
            try:
                fn(*args)
            except Exception as e:  # a store that is down, refuses or times out: never the tracked work's end
                if not self.failed_once:
                    self.failed_once = True
                    self.warn(
                        f"MLflow: tracking to {self.uri} failed ({type(e).__name__}: {str(e)[:200]}); the run goes "
                        "on, and what it logs is sent when the store answers again"
                    )
                return
            self._pending.popleft()
            self._progress = time.monotonic()

    def _start(self, run_name: str, tags: dict, run_id: str | None, done: threading.Event) -> None:
        try:
            if run_id is None:
                exp = self._client.get_experiment_by_name(self.experiment)
                exp_id = (
                    exp.experiment_id
                    if exp is not None
                    else self._client.create_experiment(self.experiment, artifact_location=local_artifacts(self.uri))
                )
                run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            else:
                self._client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        finally:
            done.set()

    def _op(self, op: str, *args) -> None:
        if self.run_id is None:
            raise ConnectionError("the run was not created in the store yet")
        c, rid = self._client, self.run_id
        entities = self._mlflow.entities
        if op == "log_params":
            c.log_batch(rid, params=[entities.Param(k, v) for k, v in args[0].items()])
        elif op == "log_metrics":
            metrics, step, stamp = args
            c.log_batch(rid, metrics=[entities.Metric(k, v, stamp, step or 0) for k, v in metrics.items()])
        elif op == "set_tags":
            c.log_batch(rid, tags=[entities.RunTag(k, v) for k, v in args[0].items()])
        elif op == "log_artifact":
            c.log_artifact(rid, args[0], args[1])
        elif op == "log_dict":
            c.log_dict(rid, args[0], args[1])
        elif op == "register":
            self._register(*args)
        elif op == "end":
            c.set_terminated(rid, status=args[0])

    def _register(self, name: str, folder: str, tags: dict) -> None:
        c = self._client
        try:
            c.get_registered_model(name)
        except self._mlflow.exceptions.MlflowException:
            c.create_registered_model(name, description="an imgclf image classifier")
        version = c.create_model_version(name, source=f"runs:/{self.run_id}/{folder}", run_id=self.run_id, tags=tags)
        log.info("MLflow: registered %s version %s (models:/%s/%s)", name, version.version, name, version.version)


TRACKING_JSON = "tracking.json"  # in a tracked run's folder: its store, experiment and MLflow run id


def read_tracking(run_folder: str) -> dict:
    """A run folder's tracking.json ({} when the run was not tracked or the file is unreadable)."""
    try:
        with open(os.path.join(run_folder, TRACKING_JSON), encoding="utf-8") as f:
            got = json.load(f)
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def track_command(
    options, command: str, weights: str, *, params: dict, metrics: dict, files: list[str], commit: str | None
) -> Tracker:
    """`evaluate` or `export` with --track mlflow: an MLflow run of its own, filed under the training run of
    `weights` when that run was tracked (the same store and experiment unless given, and MLflow's parent-run tag),
    with the command's parameters, numbers and files, and `commit` (compute/machine.git_commit). Returns the
    tracker, still open: the caller finishes it (after registering, for export --register)."""
    trained = read_tracking(os.path.dirname(os.path.abspath(weights)))
    uri = options.tracking_uri or trained.get("tracking_uri") or default_uri("runs")
    tracker = Tracker(uri, options.experiment or trained.get("experiment"))
    tags = {"imgclf.command": command, "imgclf.weights": os.path.abspath(weights)}
    if trained.get("run_id"):
        tags["mlflow.parentRunId"] = trained["run_id"]
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run_id = tracker.start(f"{command} {os.path.basename(os.path.dirname(os.path.abspath(weights)))}", tags=tags)
    log.info("MLflow: tracking to %s, experiment %s, run %s", uri, tracker.experiment, run_id or "?")
    tracker.log_params(params)
    tracker.log_metrics(metrics)
    for path in files:
        tracker.log_artifact(path)
    return tracker


def is_model_uri(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(MODEL_URI_SCHEMES)


def fetched(options, cache: str):
    """`options` (a command's options object) with a WEIGHTS of `models:/NAME/VERSION` replaced by the local file
    (fetch_model), from --tracking-uri's store or the default one; other options objects unchanged."""
    weights = getattr(options, "weights", None)
    if not is_model_uri(weights):
        return options
    uri = getattr(options, "tracking_uri", None) or default_uri("runs")
    path = fetch_model(weights, uri, cache)
    log.info("%s: %s (from %s)", weights, path, uri)
    return dataclasses.replace(options, weights=path)


def fetch_model(uri: str, tracking_uri: str, cache: str) -> str:
    """`models:/NAME/VERSION` (or `models:/NAME@ALIAS`, `runs:/RUN/PATH`) as a local model file: the registered
    files downloaded into `cache` (a version once: versions do not change), and the one model file among them
    (best.pt, or an export). UsageError in one line when the store has no such model."""
    mlflow = import_mlflow()
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]  # one store's models:/m/1 is not another's
    name = uri.split(":/", 1)[1].strip("/")
    dest = Path(cache) / "mlflow-models" / store / name.replace("/", "_").replace("@", "_at_")
    if "@" in name or not dest.exists():
        try:
            source = _source(mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), uri)
            part = Path(str(dest) + ".part")
            shutil.rmtree(part, ignore_errors=True)
            got = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(part), tracking_uri=tracking_uri)
            )
        except Exception as e:
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UsageError(f"{uri}: not found in the MLflow store {tracking_uri} ({why})") from None
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(got if got.is_dir() else got.parent, dest)
    models = sorted(p for p in dest.rglob("*") if p.is_file() and p.suffix in (".pt", ".pt2", ".onnx", ".ts"))
    if len(models) != 1:
        raise UsageError(f"{uri}: expected one model file among its files, found {len(models)} ({dest})")
    return str(models[0])


def _source(client, uri: str) -> str:
    """Where a `models:/` URI's files are (runs:/RUN/PATH, or the store's own artifact URI), asked of `client`
    (MLflow's own resolution of models:/ asks the default registry, not the one given: MLflow 3.17)."""
    if uri.startswith("runs:/"):
        return uri
    name, _, version = uri[len("models:/") :].strip("/").partition("/")
    if "@" in name and not version:
        name, alias = name.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    if not version:
        raise ValueError("give models:/NAME/VERSION or models:/NAME@ALIAS")
    return client.get_model_version_download_uri(name, version)
