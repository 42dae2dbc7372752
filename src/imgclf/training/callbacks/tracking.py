"""--track mlflow: the run in MLflow (core/tracking.py), on rank 0 only. At the start the resolved options as
parameters (the ones the user set listed in the tag `imgclf.options_set`), the machine (`imgclf env --json`), the
data (fingerprint, classes, images per split, what was left out and fixed) and the project's git commit; after
each epoch its metrics at the run's step; at the end results.json's numbers, the run's files (best.pt,
results.json, report.html, metrics.csv, config.yaml, MODEL_CARD.md) and, with --register NAME, best.pt as a new
version of a registered model, with its classes and preprocessing as tags.

The MLflow run's id is kept in the run folder (tracking.json), so that a resumed run goes on in the same MLflow run
and `evaluate` and `export` of its checkpoint are filed under it."""

from __future__ import annotations

import json
import os
from collections import Counter

from imgclf.compute.machine import git_commit, machine_report
from imgclf.core.callback import Callback
from imgclf.core.errors import Preempted
from imgclf.core.fileio import write_json
from imgclf.core.tracking import TRACKING_JSON, Tracker, default_uri, read_tracking

RUN_FILES = (
    "results.json",
    "report.html",
    "metrics.csv",
    "config.yaml",
    "split.csv",
    "MODEL_CARD.md",
    "curves.png",
    "confusion_matrix.png",
    "reliability.png",
)


class Tracking(Callback):
    """The run's MLflow run. After the final report (order 1100), so that its files exist when they are sent."""

    order = 1100
    state_key = "tracking"

    def __init__(self, cfg):
        self.cfg = cfg
        self.uri = cfg.tracking_uri or default_uri(cfg.out)
        self.tracker: Tracker | None = None
        self.remembered = False

    def on_fit_start(self, trainer) -> None:
        self.tracker = Tracker(self.uri, self.cfg.experiment, warn=trainer.run_dir.warning)
        run_dir = trainer.run_dir.path
        earlier = read_tracking(run_dir).get("run_id") if trainer.plan.resumed else None
        tags = {"imgclf.command": "train", "imgclf.run_dir": os.path.abspath(run_dir)}
        commit = git_commit(os.getcwd())
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run_id = self.tracker.start(os.path.basename(run_dir), tags=tags, run_id=earlier)
        self._remember(trainer)
        trainer.info("MLflow: tracking to %s, experiment %s, run %s", self.uri, self.tracker.experiment, run_id or "?")
        if earlier:
            return  # the parameters and the data were logged when the run began
        cfg = trainer.plan.cfg
        self.tracker.log_params(cfg.to_dict())
        self.tracker.set_tags({"imgclf.options_set": ",".join(sorted(cfg.explicit)), "imgclf.model": cfg.model})
        self.tracker.log_dict(machine_report(), "env.json")
        self.tracker.log_dict(data_summary(trainer), "data.json")
        self.tracker.set_tags({"imgclf.data_fingerprint": trainer.data.fingerprint})

    def on_validation_end(self, trainer, row: dict) -> None:
        numbers = {k: v for k, v in row.items() if k != "epoch"}
        self.tracker.log_metrics({**numbers, "epoch": row.get("epoch", trainer.state.epoch)}, trainer.state.step)
        self._remember(trainer)  # a store that did not answer at the start has made the run since

    def on_fit_end(self, trainer) -> None:
        run_dir, results = trainer.run_dir, trainer.results or {}
        self.tracker.log_metrics({"best": results.get("best", {})}, trainer.state.step)
        for name in RUN_FILES:
            self.tracker.log_artifact(run_dir.file(name))
        self.tracker.log_artifact(run_dir.file("best.pt"), "model")
        if self.cfg.register:
            self.tracker.register(self.cfg.register, "model", model_tags(trainer))
        self.end("FINISHED", trainer)

    def end(self, status: str, trainer=None) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)
            if trainer is not None:
                self._remember(trainer)
            self.tracker = None

    def _remember(self, trainer) -> None:
        """Keep the MLflow run's id in tracking.json once the store has made the run (at the start, or at the first
        epoch's end after a store that was down came back), so that `--resume` goes on in the same run."""
        if self.remembered or not self.tracker.run_id:
            return
        record = {"tracking_uri": self.uri, "experiment": self.tracker.experiment, "run_id": self.tracker.run_id}
        write_json(record, trainer.run_dir.file(TRACKING_JSON))
        self.remembered = True


def data_summary(trainer) -> dict:
    """What the run knows of its data, for the tracking store: no image is read again."""
    data, source = trainer.data, trainer.data.source
    splits = {}
    for name in ("train", "val"):
        split = getattr(data, name).split
        if split.targets is not None:  # multi-label: images holding each label
            per = dict(zip(source.classes, (int(n) for n in split.targets.sum(axis=0)), strict=True))
        else:
            per = dict(Counter(source.classes[i] for i in split.labels))
        splits[name] = {"images": len(split.labels), "per_class": per}
    fixes = data.fixes
    return {
        "data": trainer.plan.cfg.data,
        "fingerprint": data.fingerprint,
        "classes": list(source.classes),
        "task": trainer.plan.cfg.task,
        "splits": splits,
        "left_out": [{"split": s, "path": p, "why": w} for s, p, w in data.left_out[:1000]],
        "left_out_total": len(data.left_out),
        "fixes": None
        if fixes is None
        else {"file": fixes.file, "sha256": fixes.sha256, "dropped": fixes.dropped, "relabelled": fixes.relabelled},
    }


def model_tags(trainer) -> dict:
    """A registered version's tags: what serving it needs to know without opening it."""
    return {
        "classes": json.dumps(list(trainer.data.source.classes)),
        "preprocess": json.dumps(trainer.data.preprocess.to_dict()),
        "task": trainer.plan.cfg.task,
        "model": trainer.plan.cfg.model,
        "data_fingerprint": trainer.data.fingerprint,
    }


def fail_tracking(callbacks, error: BaseException) -> None:
    """A run that raised: its MLflow run ends as KILLED (interrupted, preempted) or FAILED."""
    status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit, Preempted)) else "FAILED"
    for cb in callbacks:
        if isinstance(cb, Tracking):
            cb.end(status)
