"""What a run or evaluation folder holds, read once for report.html (report.py): its files, and the predictions
and metrics of its model on its split, computed once and shared by the sections."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import yaml

from imgclf.core.errors import DataError, UsageError
from imgclf.data.feed import make_feed
from imgclf.data.pipeline import default_workers
from imgclf.evaluation.calibration import trust_metrics
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import align_classes, infer, open_model_data
from imgclf.infer.runtime import open_model


@dataclass
class Folder:
    """What a run or evaluation folder holds, read once."""

    path: str
    kind: str  # "run" or "evaluation"
    results: dict | None = None
    config: dict | None = None
    eval: dict | None = None
    weights: str | None = None
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
        raise UsageError(
            f"'{path}' holds neither results.json, config.yaml, metrics.csv (a run) nor eval.json (an evaluation): "
            "pass runs/NAME or an eval-SPLIT folder"
        )
    f.results = read_json(f.file("results.json")) if f.has("results.json") else None
    if f.has("config.yaml"):
        with open(f.file("config.yaml"), encoding="utf-8") as fh:
            f.config = yaml.safe_load(fh) or {}
    f.weights = next((f.file(n) for n in ("best.pt", "last.pt") if f.has(n)), None)
    return f


def data_of(f: Folder) -> str | None:
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
    labels = torch.as_tensor(mapping, dtype=torch.long)[labels]
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
