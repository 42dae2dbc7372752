"""What `imgclf evaluate`, `calibrate`, `robustness`, `score`, `explain`, `report` and `card` run: each calls its API
function and prints the result. Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json
import logging
import os

from imgclf.cli.console import EXIT_BROKEN_PIPE, Stdout, rank
from imgclf.cli.options import (
    CalibrateOptions,
    CardOptions,
    EvaluateOptions,
    ExplainOptions,
    ReportOptions,
    RobustnessOptions,
    ScoreOptions,
)
from imgclf.compute.machine import git_commit
from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.escape import one_line
from imgclf.core.multilabel import MULTILABEL, join_labels
from imgclf.core.options import check_output_folder, parse_eps
from imgclf.core.tracking import track_command
from imgclf.evaluation.calibration import calibrate, format_calibration
from imgclf.evaluation.card import check_card_out, write_card
from imgclf.evaluation.command import evaluate
from imgclf.evaluation.explain import explain
from imgclf.evaluation.metrics import format_report
from imgclf.evaluation.multilabel_eval import format_multilabel_report
from imgclf.evaluation.ood_eval import format_ood, plot_name
from imgclf.evaluation.report import build_report
from imgclf.evaluation.robustness import format_table, robustness
from imgclf.training.curriculum import score

log = logging.getLogger(__name__)


def evaluate_command(o: EvaluateOptions) -> int:
    if o.out:
        check_output_folder(o.out, "--out")
    m = evaluate(
        o.weights,
        o.data,
        split=o.split,
        out=o.out,
        batch_size=o.batch_size,
        device=o.device,
        workers=o.workers,
        data_root=o.data_root,
        precision=o.precision,
        tta=o.tta,
        fixes=o.apply_fixes,
        ood_data=o.ood_data,
    )
    if rank() > 0:  # under torchrun: every rank has the metrics, rank 0 reports them
        return 0
    if o.track != "none":
        track_evaluation(o, m)
    if o.json:
        print(json.dumps(m, indent=2))
        return 0
    multi = m.get("task") == MULTILABEL
    print(format_multilabel_report(m) if multi else format_report(m))
    files = "reliability.png, label_errors.png" if multi else "confusion_matrix.png, misclassified.png, reliability.png"
    if "ood" in m:
        print(format_ood(m["ood"]))
        files += ", " + ", ".join(plot_name(s) for s in m["ood"]["scores"])
    log.info("wrote eval.json, %s to %s", files, m["out"])
    return 0


def track_evaluation(o: EvaluateOptions, m: dict) -> None:
    """--track mlflow: the evaluation as an MLflow run, under the training run's when that was tracked."""
    params = {"weights": o.weights, "data": o.data or "(the training data)", "split": o.split, "tta": o.tta}
    files = [os.path.join(m["out"], name) for name in sorted(os.listdir(m["out"]))]
    skip = ("per_class", "confusion_matrix", "classes", "files", "ood")
    metrics = {k: v for k, v in m.items() if k not in skip}
    tracker = track_command(
        o, "evaluate", o.weights, params=params, metrics=metrics, files=files, commit=git_commit(os.getcwd())
    )
    if o.register:
        log.warning("--register is for train and export; evaluate only tracks")
    tracker.finish()


def calibrate_command(o: CalibrateOptions) -> int:
    r = calibrate(
        o.weights,
        o.data,
        split=o.split,
        data_root=o.data_root,
        batch_size=o.batch_size,
        device=o.device,
        workers=o.workers,
        threshold=o.threshold,
        ood_bank=o.ood_bank,
        ood_accept=o.ood_accept,
    )
    print(json.dumps(r.to_dict(), indent=2) if o.json else format_calibration(r))
    return 0


def robustness_command(o: RobustnessOptions) -> int:
    if o.out:
        check_output_folder(o.out, "--out")
    step = o.step_size
    if step is not None:
        values = parse_eps(step)
        if len(values) != 1:
            raise UsageError(f"--step-size '{step}': give one value, as in 2/255")
        step = values[0]
    r = robustness(
        o.weights,
        o.data,
        split=o.split,
        attacks=o.attack or (),
        eps=o.eps,
        steps=o.steps,
        step_size=step,
        corruptions=o.corruptions,
        severities=o.severities,
        limit=o.limit,
        out=o.out,
        batch_size=o.batch_size,
        device=o.device,
        seed=o.seed,
        data_root=o.data_root,
        workers=o.workers,
    )
    print(json.dumps(r, indent=2) if o.json else format_table(r))
    if not o.json:
        log.info("wrote robustness.json and robustness.png to %s", r["out"])
    return 0


def score_command(o: ScoreOptions) -> int:
    r = score(
        o.weights,
        o.data,
        out=o.out,
        batch_size=o.batch_size,
        device=o.device,
        workers=o.workers,
        data_root=o.data_root,
    )
    for path, reason in r["left_out"]:
        log.warning("left out %s: %s", one_line(path), one_line(reason))
    print(f"scored {r['images']} images (mean loss {r['mean_loss']:.4f}): {r['out']}")
    return 0


def explain_command(o: ExplainOptions) -> int:
    stdout = Stdout(keep_going=True)  # the overlays are the result: a closed stdout does not stop them

    def line(r: dict) -> str:
        if o.json:
            return json.dumps(r)
        path = one_line(r["path"])  # as predict's table: a name with a newline or NUL stays one row
        if "error" in r:
            return f"{path}\tERROR\t{one_line(r['error'])}"
        label, target, overlay = (one_line(r[k]) for k in ("label", "target", "overlay"))
        if "labels" in r:  # a multi-label model: its label set, then the map's label and its probability
            labels = one_line(join_labels(r["labels"])) or "(none)"
            return f"{path}\t{labels}\tmap for {target}\t{r['target_probability']:.3f}\t{overlay}"
        return f"{path}\t{label}\t{r['probability']:.3f}\tmap for {target}\t{overlay}"

    r = explain(
        o.weights,
        o.images,
        target=o.target,
        out=o.out,
        device=o.device,
        sheet=o.sheet,
        max_side=o.max_side,
        batch_size=o.batch_size,
        on_row=lambda row: stdout.print(line(row)),
    )
    done = len(r["rows"]) - r["errors"]
    log.info("wrote %d overlays to %s (Grad-CAM on %s)", done, r["out"], r["layer"] or "no layer")
    if r["errors"]:
        raise ImgclfError(f"{r['errors']} of {len(r['rows'])} images could not be explained (listed above)")
    return EXIT_BROKEN_PIPE if stdout.closed else 0


def report_command(o: ReportOptions) -> int:
    print(build_report(o.folder))
    return 0


def card_command(o: CardOptions) -> int:
    check_card_out(o.out, o.weights)  # before the checkpoint is read
    print(write_card(o.weights, o.out))
    return 0
