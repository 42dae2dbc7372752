"""Evaluation: accuracy, loss, macro-F1, top-5 (over 5 classes), a per-class report, the confusion matrix, the
calibration error, coverage at confidence thresholds (calibration.py) and their plots."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .data.feed import make_feed
from .data.pipeline import default_workers
from .data.sources import open_source
from .device import autocast, to_layout
from .errors import DataError
from .fileio import write_json
from .progress import progress

log = logging.getLogger(__name__)


@torch.no_grad()
def infer(
    model, loader, device=None, amp_dtype=None, desc: str = "eval", channels_last: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N x C, float32, cpu) and labels (N) for every batch of `loader`.

    `model` is an nn.Module (run on `device` under `amp_dtype`) or a runtime.Runner (which knows its own)."""
    runner = getattr(model, "logits", None) if not isinstance(model, torch.nn.Module) else None
    if runner is None:
        model.eval()
    outs, ys = [], []
    for x, y in progress(loader, total=len(loader), desc=desc, unit="batch"):
        if runner is not None:
            out = runner(x)
        else:
            with autocast(device, amp_dtype):
                out = model(to_layout(x.to(device, non_blocking=True), channels_last))
        outs.append(out.float().cpu())
        ys.append(y)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(ys)


def infer_sharded(
    model, feed, device=None, amp=None, *, world=None, desc: str = "eval", channels_last: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`infer` over a feed's evaluation batches. Under torchrun each rank runs its block of whole batches (every
    image in the batch it has in one process) and every rank gets all the logits and labels, in order."""
    from .distributed import batch_block, current, gather

    world = world or current()
    if not world.distributed:
        return infer(model, feed.batches(), device, amp, desc=desc, channels_last=channels_last)
    block = batch_block(len(feed.batches()), world.rank, world.size)
    logits, labels = infer(model, feed.batches(block), device, amp, desc=desc, channels_last=channels_last)
    parts = [p for p in gather((logits, labels), world) if len(p[1])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


TOP_K = 5  # the top-k accuracy reported, when there are more than TOP_K classes


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Metrics as plain types. Accuracies are fractions in [0, 1]. top5 is None unless there are more than 5
    classes: with 5 or fewer the true class is always among the top 5, a score of 1.0 that says nothing."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    n_cls = len(classes)
    y = labels.numpy()
    pred = logits.argmax(1).numpy()
    idx = list(range(n_cls))
    with warnings.catch_warnings():
        # What sklearn warns about is handled here, so its warnings would only reach the user's console:
        # a class never predicted or absent scores 0 (zero_division=0), and a split of one class still gets
        # an n x n matrix (labels=idx).
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        loss = float(F.cross_entropy(logits, labels).item()) if len(y) else float("nan")
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
        top5 = None
        if n_cls > TOP_K and len(y):
            top5 = float(top_k_accuracy_score(y, logits.numpy(), k=TOP_K, labels=idx))
        macro_f1 = float(f1_score(y, pred, labels=idx, average="macro", zero_division=0))
        cm = confusion_matrix(y, pred, labels=idx).tolist()
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "loss": loss,
        "macro_f1": macro_f1,
        "top5_accuracy": top5,
        "num_images": int(len(y)),
        "classes": list(classes),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm,
    }


def format_report(m: dict) -> str:
    lines = [
        f"accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['macro_f1']:.4f}"
        + (f"  top-5 {m['top5_accuracy']:.4f}" if m.get("top5_accuracy") is not None else "")
        + f"  ({m['num_images']} images)"
    ]
    lines += _trust_lines(m)
    w = max([5] + [len(c) for c in m["classes"]])
    lines.append(f"{'class':<{w}}  precision  recall      f1  support")
    for c, r in m["per_class"].items():
        lines.append(f"{c:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    return "\n".join(lines)


def _trust_lines(m: dict) -> list[str]:
    """ECE and the coverage table, where the metrics have them (evaluate's do; training's do not)."""
    if "calibration" not in m:
        return []
    c = m["calibration"]
    how = [f"temperature {c['temperature']:.4g}" if c["temperature"] != 1.0 else "not calibrated"]
    if m.get("tta"):
        how.append(f"--tta {m['tta']}")
    lines = [f"ECE ({c['ece_bins']} bins) {c['ece']:.4f}  ({', '.join(how)})"]
    cells = [
        f">= {s['threshold']:g}: {s['coverage']:.1%} of images"
        + (f", accuracy {s['accuracy']:.4f}" if s["accuracy"] is not None else "")
        for s in c["selective"]
    ]
    lines.append("confidence " + "; ".join(cells))
    return lines


def open_model_data(config: dict | None, data: str | None, split: str, data_root: str | None = None):
    """(source, split) of `data`, default the data the model was trained on, opened as its training opened it
    (the same carved validation split, from the recorded fraction and seed)."""
    cfg = config or {}
    data = data or cfg.get("data")
    if not data:
        raise DataError("no --data given and the model does not record its data: pass --data")
    src = open_source(
        data,
        data_root=data_root or cfg.get("data_root"),
        val_fraction=cfg.get("val_fraction", 0.2),
        seed=cfg.get("seed", 0),
    )
    return src, src.split(split)


def align_classes(data_classes: list[str], model_classes: list[str], where: str) -> list[int]:
    """Map the data's class indices to the model's, by name."""
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise DataError(
            f"{where} has classes the model does not know ({', '.join(missing[:5])}); "
            f"the model was trained on: {', '.join(model_classes[:10])}"
        )
    return [model_classes.index(c) for c in data_classes]


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
) -> dict:
    """Evaluate a checkpoint or an exported model on a split of `data` (default: the data it was trained on).

    Writes eval.json, confusion_matrix.png, misclassified.png and reliability.png into `out` (default: next to
    the weights, in eval-SPLIT/) and returns the metrics dict. Probabilities are calibrated with the checkpoint's
    temperature (imgclf calibrate); `tta`: test-time augmentation (none, flip, flip-crop; see tta.py).

    Under torchrun the ranks split the images (whole batches each, so every image is computed as in one process)
    and gather the logits: the metrics are those of one process, and rank 0 writes them."""
    from .device import resolve_device
    from .distributed import current, setup

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
        )


def split_logits(runner, data, split, data_root=None, *, batch_size=256, workers=None, cache="auto", world=None):
    """(logits, labels in the model's class order, feed, left-out files, source) of `runner` on `split` of `data`
    (default: the data the model was trained on, opened as its training opened it)."""
    src, s = open_model_data(runner.config, data, split, data_root)
    data = data or runner.config.get("data")
    workers = default_workers() if workers is None else workers
    mapping = align_classes(src.classes, runner.classes, data)
    feed, bad = make_feed(
        s, runner.preprocess, cache=cache, workers=max(1, workers), eval_batch_size=batch_size, desc=f"decode {split}"
    )
    for path, reason in bad:
        log.warning("left out %s: %s", path, reason)
    logits, labels = infer_sharded(runner, feed, world=world, desc=f"evaluate {split}")
    labels = torch.as_tensor(mapping, dtype=torch.long)[labels]  # the data's class order -> the model's
    return logits, labels, feed, bad, src


def _evaluate(
    weights, data, *, split, out, batch_size, device, workers, data_root, precision, plots, cache, tta=None
) -> dict:
    from .calibration import trust_metrics
    from .distributed import current
    from .runtime import open_model

    world = current()
    runner = open_model(weights, device=device, precision=precision, tta=tta)
    logits, labels, feed, bad, src = split_logits(
        runner, data, split, data_root, batch_size=batch_size, workers=workers, cache=cache, world=world
    )
    data = data or runner.config.get("data")
    classes = runner.classes
    metrics = compute_metrics(logits, labels, classes)
    metrics.update(
        {
            "split": split,
            "data": src.location,
            "weights": os.path.abspath(weights),
            "format": runner.format,
            "tta": runner.tta,
            # softmax of the logits above: the checkpoint's temperature (or the export's, in its graph) applied
            "calibration": {"temperature": runner.temperature, **trust_metrics(logits, labels)},
            "left_out": [{"path": p, "reason": r} for p, r in bad],
        }
    )

    # an exported file next to its checkpoint gets its own folder (eval-val-onnx-int8), not the checkpoint's;
    # a --tta evaluation its own too (eval-val-tta-flip), beside the plain one
    tag = split if runner.format == "checkpoint" else f"{split}-{runner.format}"
    tag += f"-tta-{tta}" if tta else ""
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), f"eval-{tag}")
    if not world.main:  # the same metrics on every rank; rank 0 writes them
        return {**metrics, "out": out}
    os.makedirs(out, exist_ok=True)
    write_json(metrics, os.path.join(out, "eval.json"))
    if plots:
        write_eval_plots(metrics, logits, labels, feed, classes, out, title=f"{os.path.basename(str(data))} {split}")
        try:  # report.html is a convenience: it never fails the evaluation
            from .report import build_report

            build_report(out, predictions=(logits, labels, feed.split, runner))
        except Exception as e:
            log.warning("report.html not written: %s: %s", type(e).__name__, e)
    metrics["out"] = out
    return metrics


def write_eval_plots(metrics, logits, labels, feed, classes, out, title="", n_worst: int = 24) -> None:
    from .plots import plot_confusion, plot_misclassified, plot_reliability

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
