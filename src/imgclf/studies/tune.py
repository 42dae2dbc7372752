"""`imgclf tune`: a search for good training options on Optuna (https://optuna.org): TPE sampling, Hyperband
(successive halving in brackets) fed by each epoch's validation metric, a study kept in SQLite so that a killed `tune` goes on where it
stopped, every trial a normal run folder, and the best options written as `best.yaml`, which `imgclf train
--config best.yaml` runs as it is.

The study's folder (OUT/NAME, default OUT/tune-MODEL-DATA):
    study.db        the Optuna study (SQLite): every trial, its options, its per-epoch values, its state
    trials/NNN/     each trial's run folder (config.yaml, metrics.csv, best.pt, results.json, ...)
    best.yaml       the base options and the best trial's, for `imgclf train --config`
    tune.json       the trials (number, state, value, options, why it failed or was pruned), the best
    tune.html       the optimisation history, the options' importances and the best trials' curves

A trial that fails (a diverging lr, out of memory, any error) is recorded as failed with its reason, and the study
goes on. A trial that a kill interrupted is continued from its run folder's last checkpoint when the study
resumes (`--resume auto`): a new trial number with the same options and folder, the old one marked failed
"interrupted, continued as trial N", so that no finished trial is repeated and no interrupted one lost.

Optuna is an optional extra (`pip install 'imgclf[tune]'`), imported when `tune` runs.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass

from imgclf.core.callback import Callback
from imgclf.core.errors import UsageError, first_line
from imgclf.core.fileio import write_json
from imgclf.core.options import load_yaml, save_yaml
from imgclf.studies.tune_report import write_report
from imgclf.training.api import train
from imgclf.training.options import FIELDS, TrainConfig, make_config
from imgclf.training.plan import RESUME_OVERRIDES
from imgclf.training.recipes import LR_PER_IMAGE, RECIPES, WEIGHT_DECAY
from imgclf.training.rundir import new_run_path

log = logging.getLogger(__name__)

INSTALL = "pip install 'imgclf[tune]'"
KINDS = ("float", "int", "categorical")
# the options a trial may not set: where it runs, what it trains on, how it is tracked
NOT_SEARCHED = {"data", "out", "name", "resume", "config", "device", "track", "tracking_uri", "experiment"}


def import_optuna():
    try:
        import optuna  # noqa: PLC0415 - an optional extra, and a second to import: only when tune runs
    except ImportError:
        raise UsageError(f"imgclf tune needs Optuna, which is not installed: {INSTALL}") from None
    return optuna


def default_space(cfg: TrainConfig) -> dict:
    """The search space of a recipe: fine-tuning a pretrained model (the default), or `--recipe fast`'s
    from-scratch training, whose learning rate and weight decay are searched around the recipe's own."""
    if cfg.recipe == "fast":
        # around the recipe's own lr at the batch it trains with (the recipe's 1,024 unless --batch-size is given),
        # not the generic default batch that the base config holds before the recipe is applied
        batch = cfg.batch_size if "batch_size" in cfg.explicit else RECIPES["fast"]["batch_size"]
        lr = LR_PER_IMAGE * batch
        return {
            "lr": {"type": "float", "low": lr / 4, "high": lr * 4, "log": True},
            "weight_decay": {"type": "float", "low": WEIGHT_DECAY / 4, "high": WEIGHT_DECAY * 4, "log": True},
            "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
            "mixup": {"type": "categorical", "choices": [0.0, 0.2]},
            "batch_size": {"type": "categorical", "choices": [512, 1024]},
            "epochs": {"type": "int", "low": max(2, cfg.epochs // 2), "high": cfg.epochs},
        }
    space = {
        "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
        "mixup": {"type": "categorical", "choices": [0.0, 0.2, 0.4]},
        "cutmix": {"type": "categorical", "choices": [0.0, 1.0]},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        "epochs": {"type": "int", "low": max(1, cfg.epochs // 2), "high": cfg.epochs},
    }
    if cfg.pretrained:  # only a pretrained backbone is worth keeping frozen or slower at first
        space["freeze_epochs"] = {"type": "int", "low": 0, "high": max(1, cfg.epochs // 3)}
        space["backbone_lr_scale"] = {"type": "float", "low": 0.01, "high": 1.0, "log": True}
    return space


def read_space(path: str) -> dict:
    """`--space space.yaml`: OPTION: {type: float|int|categorical, low, high, log} or {type: categorical, choices};
    every entry checked before any work, one line naming the file and option."""
    raw = load_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"{path}: give a mapping of option names to ranges (see docs/tune.md)")
    for name, spec in raw.items():
        where = f"{path}: {name}"
        if name not in FIELDS or name in NOT_SEARCHED:
            raise UsageError(f"{where}: not an option a trial can search (see imgclf train --help)")
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise UsageError(f"{where}: give type: float, int or categorical")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise UsageError(f"{where}: a categorical option needs a list of choices")
        elif not all(isinstance(spec.get(k), (int, float)) for k in ("low", "high")) or spec["low"] > spec["high"]:
            raise UsageError(f"{where}: give numbers low <= high")
        elif spec.get("log") and spec["low"] <= 0:
            raise UsageError(f"{where}: a log range needs low > 0")
    return raw


def suggest(trial, space: dict) -> dict:
    """One trial's options from `space`."""
    out = {}
    for name, s in space.items():
        if s["type"] == "categorical":
            out[name] = trial.suggest_categorical(name, s["choices"])
        elif s["type"] == "int":
            out[name] = trial.suggest_int(name, int(s["low"]), int(s["high"]), log=bool(s.get("log")))
        else:
            out[name] = trial.suggest_float(name, float(s["low"]), float(s["high"]), log=bool(s.get("log")))
    return out


class ReportEpochs(Callback):
    """Each epoch's validation metric to the trial (the pruner's evidence), at the trial's progress through its own
    schedule on the study's scale of epochs: in a study of up to 6 epochs, epoch 1 of a 2-epoch trial is step 3,
    so the pruner compares trials at the same point of their schedules (a short schedule decays its lr sooner and
    would otherwise look better after its first epoch than a long one does). A trial the pruner stops ends after
    this epoch, validated and saved like any run."""

    order = 950  # after checkpointing: the epoch is saved before the trial may be stopped
    state_key = "tune_report"

    def __init__(self, trial, monitor: str, scale: float = 1.0):
        self.trial, self.monitor, self.scale, self.pruned, self.step = trial, monitor, scale, False, 0

    def on_validation_end(self, trainer, row: dict) -> None:
        value = row.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.step = max(self.step + 1, round(trainer.state.epoch * self.scale))
        self.trial.report(float(value), step=self.step)
        if self.trial.should_prune():
            self.pruned = True
            trainer.stop(f"pruned by the study after epoch {trainer.state.epoch} ({self.monitor} {value:.4f})")


@dataclass
class Tuning:
    """What a `tune` call searches: the base options, the space, the study's folder, and how long."""

    base: TrainConfig
    space: dict
    folder: str
    trials: int | None
    seconds: float | None
    seed: int = 0

    @property
    def monitor(self) -> str:
        return self.base.monitor

    @property
    def direction(self) -> str:
        return "minimize" if self.monitor.endswith("loss") else "maximize"


def study_folder(base: TrainConfig, resume: str | None) -> str:
    """OUT/NAME (default OUT/tune-MODEL-DATA, numbered if taken); with --resume auto, OUT/NAME as it is, and with
    --resume DIR, that study folder, which must hold a study."""
    if resume and resume != "auto":
        if not os.path.isfile(os.path.join(resume, "study.db")):
            raise UsageError(f"--resume {resume}: no study.db there (give the folder `imgclf tune` wrote, or auto)")
        return resume
    if resume == "auto" and base.name:
        return os.path.join(base.out, base.name)
    if base.name and os.path.isfile(os.path.join(base.out, base.name, "study.db")):
        raise UsageError(f"{os.path.join(base.out, base.name)} holds a study: continue it with --resume auto")
    return new_run_path(base.out, base.name, "tune-" + base.model, str(base.data))


def tune(t: Tuning) -> dict:
    """Run the study in `t.folder` (a new one, or the one there: its trials are kept, an interrupted one is
    continued) until `t.trials` trials have ended or `t.seconds` are spent; writes best.yaml, tune.json and
    tune.html; returns tune.json's content."""
    optuna = import_optuna()
    os.makedirs(t.folder, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{os.path.abspath(t.folder)}/study.db",
        study_name="imgclf",
        load_if_exists=True,
        direction=t.direction,
        sampler=optuna.samplers.TPESampler(seed=t.seed),
        # successive halving in brackets of different aggressiveness (Optuna's benchmarks pair it with TPE): a
        # single bracket keeps only the best trial at each rung while a study has fewer than 8 trials there
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, t.base.epochs), reduction_factor=3),
    )
    if study.trials:  # a resumed study: a sampler seeded as the first session's would propose its trials again
        study.sampler = optuna.samplers.TPESampler(seed=t.seed + len(study.trials))
    continue_interrupted(study, optuna)
    used = float(study.user_attrs.get("seconds_used", 0.0))
    started = time.monotonic()
    while True:
        spent = used + time.monotonic() - started
        if not more_trials(study, t, spent, optuna):
            break
        left = None if t.seconds is None else t.seconds - spent
        study.optimize(lambda trial, left=left: objective(trial, t, left, optuna), n_trials=1, catch=(Exception,))
        study.set_user_attr("seconds_used", used + time.monotonic() - started)
        log_trial(study.trials[-1], optuna)
    return finish(study, t, optuna)


def continue_interrupted(study, optuna) -> None:
    """Trials left running by a killed `tune` (this process is the study's only worker): each marked failed and
    enqueued again with its options and run folder, so that its training goes on from its last checkpoint."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        folder = trial.user_attrs.get("run_dir")
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d was interrupted: continued from %s", trial.number, folder or "the start")
        study.enqueue_trial(trial.params, user_attrs={"continues": trial.number, "run_dir": folder})


def more_trials(study, t: Tuning, spent: float, optuna) -> bool:
    """Whether to start another trial: fewer than --trials have ended (interrupted ones not counted), and more
    than 5% of --budget (at least 30 s) is left."""
    if t.trials is not None:
        ended = [tr for tr in study.trials if tr.state.is_finished() and not interrupted(study, tr)]
        if len(ended) >= t.trials:
            return False
    if t.seconds is not None and t.seconds - spent < max(30.0, 0.05 * t.seconds):
        return False
    return True


def interrupted(study, trial) -> bool:
    return any(tr.user_attrs.get("continues") == trial.number for tr in study.trials)


def objective(trial, t: Tuning, seconds_left: float | None, optuna) -> float:
    """One trial: a normal training run with the trial's options, in the study's trials/NNN (or the folder of the
    trial it continues, resumed from its last checkpoint); its value is the best epoch's monitored metric."""
    params = suggest(trial, t.space)
    folder = trial.user_attrs.get("run_dir") or os.path.join(t.folder, "trials", f"{trial.number:03d}")
    trial.set_user_attr("run_dir", folder)
    changes = {"epochs": t.base.epochs, **params, "out": os.path.dirname(folder), "name": os.path.basename(folder)}
    changes["resume"] = None  # --resume auto is the study's, not the trial's
    if seconds_left is not None:  # the trial ends with the budget (--epochs is given: it only shortens)
        changes["time_budget"] = min(t.base.time_budget or math.inf, max(0.5, seconds_left / 60))
    config = t.base.replace(**changes)
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last):  # an interrupted trial's run: its own options, as far as it got
        kept = {k: getattr(t.base, k) for k in RESUME_OVERRIDES if k in t.base.explicit}
        config = make_config({**kept, "resume": last, "epochs": changes["epochs"]}, source="tune")
    reporter = ReportEpochs(trial, t.monitor, scale=max(1, t.base.epochs) / max(1, config.epochs))
    try:
        train(config, callbacks=[reporter])
    except Exception as e:  # recorded with the trial; the study goes on (a diverging lr, out of memory, ...)
        trial.set_user_attr("error", f"{type(e).__name__}: {first_line(str(e))}"[:500])
        log.warning("trial %d failed: %s", trial.number, trial.user_attrs["error"])
        raise
    value = best_value(folder, t.monitor, t.direction)
    if reporter.pruned:
        raise optuna.TrialPruned("pruned by the Hyperband pruner")
    return value


def best_value(folder: str, monitor: str, direction: str) -> float:
    """The run's best epoch's `monitor` in its metrics.csv (the numbers the pruner saw)."""
    with open(os.path.join(folder, "metrics.csv"), newline="", encoding="utf-8") as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor) not in (None, "")]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise UsageError(f"{folder}: no finite {monitor} in metrics.csv")
    return min(finite) if direction == "minimize" else max(finite)


def log_trial(trial, optuna) -> None:
    if trial.state == optuna.trial.TrialState.FAIL:
        return  # said when it failed, with the reason
    state = trial.state.name.lower()
    value = "" if trial.value is None else f" {trial.value:.4f}"
    shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    log.info("trial %d %s%s: %s", trial.number, state, value, shown)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def finish(study, t: Tuning, optuna) -> dict:
    """best.yaml, tune.json and tune.html from the study as it stands."""
    rows = [trial_row(study, tr) for tr in study.trials]
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    result = {
        "folder": t.folder,
        "monitor": t.monitor,
        "direction": t.direction,
        "space": t.space,
        "seconds": round(float(study.user_attrs.get("seconds_used", 0.0)), 1),
        "trials": rows,
        "best": None,
    }
    if complete:
        best = study.best_trial
        result["best"] = {"number": best.number, "value": best.value, "params": best.params}
        save_yaml(best_config(t.base, best.params), os.path.join(t.folder, "best.yaml"))
        result["best"]["config"] = os.path.join(t.folder, "best.yaml")
    write_json(result, os.path.join(t.folder, "tune.json"))
    write_report(study, result, os.path.join(t.folder, "tune.html"), optuna)
    return result


def trial_row(study, tr) -> dict:
    row = {
        "number": tr.number,
        "state": tr.state.name.lower(),
        "value": tr.value,
        "params": tr.params,
        "run_dir": tr.user_attrs.get("run_dir"),
        "epochs": len(tr.intermediate_values),
    }
    if "error" in tr.user_attrs:
        row["why"] = tr.user_attrs["error"]
    later = [o.number for o in study.trials if o.user_attrs.get("continues") == tr.number]
    if later:
        row["why"] = f"interrupted, continued as trial {later[0]}"
    return row


def best_config(base: TrainConfig, params: dict) -> dict:
    """The options `imgclf train --config best.yaml` runs: those the user gave `tune` (where it ran and how it
    was tracked included) and the best trial's."""
    given = {k: getattr(base, k) for k in sorted(base.explicit) if k not in ("name", "resume", "config")}
    return {**given, "epochs": base.epochs, **params}
