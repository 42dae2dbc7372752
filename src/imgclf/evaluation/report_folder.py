"""What a run or evaluation folder holds, read once for report.html (report.py): its files, and the predictions
and metrics of its model on its split, computed once and shared by the sections."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import yaml

from imgclf.core.errors import DataError, UsageError
from imgclf.data.feed import make_feed
from imgclf.data.pipeline import default_workers
from imgclf.evaluation.calibration import trust_metrics
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import align_classes, infer, open_model_data, to_model_order
from imgclf.infer.runtime import open_model

log = logging.getLogger(__name__)


@dataclass
class Folder:
    """What a run or evaluation folder holds, read once."""

    path: str
    kind: str  # "run", "evaluation" or "check" (check.json alone: `imgclf check --deep --out DIR`)
    results: dict | None = None
    config: dict | None = None
    eval: dict | None = None
    weights: str | None = None
    left_out: list[str] = field(default_factory=list)  # the folder's files that could not be read, each with why
    cache: dict = field(default_factory=dict)  # computed once, shared by the sections (predictions)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))


class Missing(Exception):
    """A section has no data: its message is the one line the page shows instead."""


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def open_folder(path: str) -> Folder:
    """The folder as a run (results.json, config.yaml or metrics.csv) or an evaluation (eval.json); a
    UsageError for anything else."""
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a folder"
        raise UsageError(f"'{path}' {what}: pass a run folder (runs/NAME) or an evaluation folder (eval-SPLIT)")
    f = Folder(os.path.abspath(path), "run")
    if f.has("eval.json"):
        f.kind, f.eval = "evaluation", read_json(f.file("eval.json"))
        if f.eval is None:
            raise UsageError(f"'{f.file('eval.json')}' is not readable JSON: run `imgclf evaluate` again")
        f.weights = f.eval.get("weights")
        return f
    if not any(f.has(n) for n in ("results.json", "config.yaml", "metrics.csv")):
        if f.has("check.json"):
            f.kind = "check"
            return f
        raise UsageError(
            f"'{path}' holds neither results.json, config.yaml, metrics.csv (a run) nor eval.json (an evaluation): "
            "pass runs/NAME or an eval-SPLIT folder"
        )
    f.results = _read_run_file(f, "results.json", json.load)
    f.config = _read_run_file(f, "config.yaml", lambda fh: yaml.safe_load(fh) or {})
    f.weights = next((f.file(n) for n in ("best.pt", "last.pt") if f.has(n)), None)
    if f.left_out and f.results is None and f.config is None and not f.weights and not f.has("metrics.csv"):
        raise UsageError(f"nothing to report in '{path}': {'; '.join(f.left_out)}")
    for why in f.left_out:
        log.warning("report: left out %s; the report shows what the folder's other files hold", why)
    return f


def _read_run_file(f: Folder, name: str, load) -> dict | None:
    """A run's results.json or config.yaml as a dict; one that is there but unreadable (not UTF-8, not JSON or
    YAML, not a mapping) is left out of the report with one warning line naming it (issue 22)."""
    if not f.has(name):
        return None
    try:
        with open(f.file(name), encoding="utf-8") as fh:
            data = load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"holds a {type(data).__name__}, not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        f.left_out.append(f"{f.file(name)}: not readable ({why})")
        return None
    return data


def data_of(f: Folder) -> str | None:
    if f.kind == "check":
        return (read_json(f.file("check.json")) or {}).get("data")
    if f.kind == "evaluation":
        return f.eval.get("data")
    return (f.config or {}).get("data")


def predictions(f: Folder) -> dict:
    """{"logits", "labels", "split", "classes", "runner"} on the folder's split (a run: validation, with its best
    checkpoint; an evaluation: its split, with its weights and --tta), computed once."""
    if "pred" in f.cache:
        return f.cache["pred"]
    if not f.weights or not os.path.isfile(f.weights):
        raise Missing(f"the weights ({f.weights or 'best.pt'}) are not there to compute the predictions from")
    split = f.eval.get("split", "val") if f.kind == "evaluation" else "val"
    runner = open_model(f.weights, device="auto", tta=(f.eval or {}).get("tta"))
    src, s = _open_split(runner, data_of(f), split)
    mapping = align_classes(src.classes, runner.classes, src.location)
    feed, _ = make_feed(s, runner.preprocess, cache="auto", workers=default_workers(), desc=f"report {split}")
    logits, labels = infer(runner, feed.batches(), desc=f"report {split}")
    labels = to_model_order(labels, mapping, len(runner.classes))
    f.cache["pred"] = {"logits": logits, "labels": labels, "split": feed.split, "runner": runner}
    return f.cache["pred"]


def _open_split(runner, data: str | None, split: str):
    """The split the folder was made on: the model's recorded data opened as its training opened it when that
    is where `data` points (an evaluation records the resolved location, which for cifar10 is not a name
    open_source takes), else `data` itself."""
    if runner.config.get("data"):
        try:
            src, s = open_model_data(runner.config, None, split)
        except DataError:  # the training data moved: what the evaluation names may still be there
            if data is None:
                raise
        else:
            if data is None or os.path.abspath(str(src.location)) == os.path.abspath(str(data)):
                return src, s
    return open_model_data(runner.config, data, split)


def set_predictions(f: Folder, logits, labels, split, runner=None) -> None:
    """Predictions already computed by the caller (evaluate), so that the report does not compute them again."""
    f.cache["pred"] = {"logits": logits, "labels": labels, "split": split, "runner": runner}


def folder_metrics(f: Folder) -> dict:
    """eval.json's metrics, or (a run) those of its best checkpoint on validation, computed here."""
    if f.kind == "evaluation":
        return f.eval
    if "metrics" not in f.cache:
        p = predictions(f)
        m = compute_metrics(p["logits"], p["labels"], list(p["runner"].classes))
        m["calibration"] = {"temperature": p["runner"].temperature, **trust_metrics(p["logits"], p["labels"])}
        f.cache["metrics"] = m
    return f.cache["metrics"]
