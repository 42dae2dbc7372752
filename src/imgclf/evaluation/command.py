"""`imgclf evaluate`: a checkpoint or an export on a split of its data; eval.json, the plots and report.html."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import current, setup
from imgclf.core.fileio import write_json
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.fixes import read_fixes
from imgclf.evaluation.calibration import trust_metrics
from imgclf.evaluation.metrics import compute_metrics
from imgclf.evaluation.multilabel_eval import multilabel_evaluation, write_multilabel_plots
from imgclf.evaluation.ood_data import check_ood_folder
from imgclf.evaluation.ood_eval import evaluate_ood, ood_feed, write_ood_plots
from imgclf.evaluation.plots import plot_confusion, plot_misclassified, plot_reliability
from imgclf.evaluation.report import build_report
from imgclf.infer.logits import split_logits
from imgclf.infer.runtime import open_model

log = logging.getLogger(__name__)


def evaluate(
    weights: str,
    data: str | None = None,
    *,
    split: str = "val",
    out: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    data_root: str | None = None,
    precision: str = "auto",
    plots: bool = True,
    cache: str = "auto",
    tta: str | None = None,
    fixes: str | None = None,
    ood_data: str | None = None,
) -> dict:
    """Evaluate a checkpoint or an exported model on a split of `data` (default: the data it was trained on).

    Writes eval.json, confusion_matrix.png, misclassified.png and reliability.png into `out` (default: next to
    the weights, in eval-SPLIT/) and returns the metrics dict. Probabilities are calibrated with the checkpoint's
    temperature (imgclf calibrate); `tta`: test-time augmentation (none, flip, flip-crop; see models/tta.py);
    `fixes`: a fixes.csv applied to the data first (eval.json's `fixes` records what it did). `ood_data`: a folder
    of images the model was never taught; eval.json's "ood" measures how well its out-of-distribution scores tell
    them from the split's (evaluation/ood_eval.py), and ood_SCORE.png shows each score's histograms.

    Under torchrun the ranks split the images (whole batches each, so every image is computed as in one process)
    and gather the logits: the metrics are those of one process, and rank 0 writes them."""
    if ood_data is not None:
        check_ood_folder(ood_data)  # before any work
    with setup(resolve_device(device)) as dev:
        return _evaluate(
            weights,
            data,
            split=split,
            out=out,
            batch_size=batch_size,
            device=str(dev) if current().distributed else device,
            workers=workers,
            data_root=data_root,
            precision=precision,
            plots=plots,
            cache=cache,
            tta=tta,
            fixes=fixes,
            ood_data=ood_data,
        )


def _evaluate(
    weights,
    data,
    *,
    split,
    out,
    batch_size,
    device,
    workers,
    data_root,
    precision,
    plots,
    cache,
    tta=None,
    fixes=None,
    ood_data=None,
) -> dict:
    world = current()
    if fixes:
        read_fixes(fixes)  # the file and its rows, before the model is opened
    runner = open_model(weights, device=device, precision=precision, tta=tta)
    # the unknown images decoded before the split is run: a folder of unreadable files is refused before that work
    unknown = (
        None if ood_data is None else ood_feed(ood_data, runner, batch_size=batch_size, workers=workers, cache=cache)
    )
    logits, labels, feed, bad, src = split_logits(
        runner, data, split, data_root, batch_size=batch_size, workers=workers, cache=cache, world=world, fixes=fixes
    )
    data = data or runner.config.get("data")
    metrics, calibration = _measure(runner, logits, labels)
    metrics.update(
        {
            "split": split,
            "data": src.location,
            "weights": os.path.abspath(weights),
            "format": runner.format,
            "tta": runner.tta,
            "calibration": calibration,
            "left_out": [{"path": p, "reason": r} for p, r in bad],
        }
    )
    if src.fixes is not None:
        metrics["fixes"] = src.fixes
    if unknown is not None:
        metrics["ood"] = evaluate_ood(runner, ood_data, logits, feed, split=split, unknown_feed=unknown, world=world)

    # an exported file next to its checkpoint gets its own folder (eval-val-onnx-int8), not the checkpoint's;
    # a --tta evaluation its own too (eval-val-tta-flip), beside the plain one
    tag = split if runner.format == "checkpoint" else f"{split}-{runner.format}"
    tag += f"-tta-{tta}" if tta else ""
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), f"eval-{tag}")
    if not world.main:  # the same metrics on every rank; rank 0 writes them
        return {**metrics, "out": out}
    _write(out, metrics, plots, (logits, labels, feed, runner), title=f"{os.path.basename(str(data))} {split}")
    metrics["out"] = out
    return metrics


def _measure(runner, logits, labels) -> tuple[dict, dict]:
    """(the metrics, the calibration block) of `runner`'s `logits` against `labels`."""
    if runner.task == MULTILABEL:  # sigmoid of the logits: the temperature (one per label, or the export's) applied
        metrics = multilabel_evaluation(
            runner.probabilities(logits).numpy(), labels.numpy(), runner.thresholds, runner.classes
        )
        return metrics, {"temperature": runner.temperature, **metrics.pop("calibration")}
    # softmax of the logits: the checkpoint's temperature (or the export's, in its graph) applied
    return compute_metrics(logits, labels, runner.classes), {
        "temperature": runner.temperature,
        **trust_metrics(logits, labels),
    }


def _write(out: str, metrics: dict, plots: bool, predictions: tuple, title: str) -> None:
    """eval.json, and with `plots` the figures and report.html, into `out`."""
    logits, labels, feed, runner = predictions
    os.makedirs(out, exist_ok=True)
    write_json(metrics, os.path.join(out, "eval.json"))
    if not plots:
        return
    if "ood" in metrics:  # before the report, which shows them
        write_ood_plots(metrics["ood"], out, title=title)
    if runner.task == MULTILABEL:
        write_multilabel_plots(metrics, out, title=title)
    else:
        write_eval_plots(metrics, logits, labels, feed, runner.classes, out, title=title)
    _report(out, (logits, labels, feed.split, runner))


def _report(out: str, predictions: tuple) -> None:
    try:  # report.html is a convenience: it never fails the evaluation
        build_report(out, predictions=predictions)
    except Exception as e:
        log.warning("report.html not written: %s: %s", type(e).__name__, e)


def write_eval_plots(metrics, logits, labels, feed, classes, out, title="", n_worst: int = 24) -> None:
    """confusion_matrix.png, reliability.png (where the metrics have calibration) and misclassified.png (the
    `n_worst` mistakes the model was surest of) into `out`."""
    plot_confusion(np.asarray(metrics["confusion_matrix"]), classes, os.path.join(out, "confusion_matrix.png"), title)
    if "calibration" in metrics:
        c = metrics["calibration"]
        plot_reliability(c["reliability"], c["ece"], os.path.join(out, "reliability.png"), title)
    prob = logits.softmax(1)
    conf, pred = prob.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:n_worst].tolist()
    images = [feed.image(i).permute(1, 2, 0).numpy() for i in order]
    plot_misclassified(
        images,
        [classes[labels[i]] for i in order],
        [classes[pred[i]] for i in order],
        [float(conf[i]) for i in order],
        os.path.join(out, "misclassified.png"),
    )
