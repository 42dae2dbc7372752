"""`imgclf robustness --corruptions` for a multi-label model: mAP (macro, over the labels with a positive image) and
micro-F1 at the model's thresholds, clean and under each corruption and severity, in place of accuracy.

The attacks (FGSM, PGD) raise the cross-entropy of one true class; a multi-label model has no one true class, so
they are refused for it (robustness.py) rather than redefined here.
"""

from __future__ import annotations

import numpy as np
import torch

from imgclf.core.progress import progress
from imgclf.evaluation.corruptions import CORRUPTIONS, corrupt
from imgclf.evaluation.multilabel import multilabel_metrics
from imgclf.evaluation.plots import new_figure, save_figure

MEASURES = ("mAP", "micro_f1")


def label_scores(runner, images, targets, tf, batch_size: int, *, desc: str, change=None) -> dict:
    """mAP and micro-F1 of `runner` on uint8 `images` against multi-hot `targets`, each batch transformed by
    `tf` (as evaluation batches are) after `change(uint8 batch, start)` corrupts it."""
    n, probs = len(targets), []
    for start in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=desc, unit="batch"):
        x = images[start : start + batch_size]
        if change is not None:
            x = change(x.contiguous(), start)
        with torch.no_grad():
            probs.append(runner.probabilities(runner.logits(tf(x))).float())
    m = multilabel_metrics(torch.cat(probs).numpy(), np.asarray(targets), runner.thresholds, runner.classes)
    return {k: m[k] for k in MEASURES}


def measure_multilabel(runner, images, targets, tf, s, split: str) -> dict:
    """robustness.json's measures of a multi-label model: clean, then each corruption at `s.severities`."""
    r = {
        "task": "multilabel",
        **{
            f"clean_{k}": v
            for k, v in label_scores(runner, images, targets, tf, s.batch_size, desc=f"clean {split}").items()
        },
    }
    results = {}
    for name, c in CORRUPTIONS.items():
        by = {k: {} for k in MEASURES}
        for sev in s.severities:

            def change(x, start, name=name, sev=sev):
                return corrupt(x, name, sev, seed=s.seed, indices=range(start, start + len(x)))

            got = label_scores(runner, images, targets, tf, s.batch_size, desc=f"{name} {sev}", change=change)
            for k in MEASURES:
                by[k][str(sev)] = got[k]
        results[name] = {
            "parameter": c.what,
            "values": {str(v): c.params[v - 1] for v in s.severities},
            **by,
            **{f"mean_{k}": _mean(by[k].values()) for k in MEASURES},
        }
    r["corruptions"] = {
        "severities": list(s.severities),
        "results": results,
        **{f"mean_{k}": _mean(x[f"mean_{k}"] for x in results.values()) for k in MEASURES},
    }
    return r


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _f(v) -> str:
    return f"{'-':>8}" if v is None else f"{v:>8.4f}"


def format_multilabel_table(r: dict) -> str:
    c = r["corruptions"]
    lines = [
        f"{r['model']} ({r['format']}) on {r['split']}: {r['num_images']} images, clean mAP {_f(r['clean_mAP']).strip()}"
        f", micro-F1 {_f(r['clean_micro_f1']).strip()} (at the model's thresholds)"
    ]
    for k in MEASURES:
        lines.append(f"{k:<18}" + "".join(f"{'sev ' + str(s):>8}" for s in c["severities"]) + f"{'mean':>8}")
        for name, row in c["results"].items():
            lines.append(f"{name:<18}" + "".join(_f(row[k][str(s)]) for s in c["severities"]) + _f(row[f"mean_{k}"]))
        lines.append(f"{'mean':<18}" + " " * (8 * len(c["severities"])) + _f(c[f"mean_{k}"]))
    return "\n".join(lines)


def plot_multilabel_robustness(r: dict, path: str) -> None:
    """mAP by corruption and severity (a heatmap)."""
    c = r["corruptions"]
    names, sev = list(c["results"]), c["severities"]
    grid = [[np.nan if (v := c["results"][n]["mAP"][str(s)]) is None else v for s in sev] for n in names]
    fig = new_figure(figsize=(1.2 * len(sev) + 3, 0.35 * len(names) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(np.asarray(grid, dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sev)), [str(s) for s in sev]), ax.set_xlabel("severity")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"mAP under corruptions (clean {r['clean_mAP'] or 0:.2f})")
    fig.colorbar(im, ax=ax, label="mAP")
    save_figure(fig, path)
