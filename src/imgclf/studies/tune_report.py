"""tune.html: a study's page, self-contained (figures as PNG beside it): the optimisation history (each trial's
value and the best so far), the options' importances (Optuna's fANOVA, once two trials have completed), the best
trials' validation curves (from their metrics.csv), and the table of every trial with its state and why it
failed or was pruned. Every string a user chose is HTML-escaped."""

from __future__ import annotations

import csv
import html
import logging
import math
import os

from imgclf.core.fileio import atomic_open
from imgclf.evaluation.plots import new_figure, save_figure

log = logging.getLogger(__name__)

BEST_CURVES = 5


def write_report(study, result: dict, path: str, optuna) -> None:
    folder = os.path.dirname(path)
    figures = [history_figure(result, os.path.join(folder, "tune_history.png"))]
    figures.append(curves_figure(result, os.path.join(folder, "tune_curves.png")))
    importances = param_importances(study, optuna)
    if importances:
        figures.append(importance_figure(importances, os.path.join(folder, "tune_importance.png")))
    with atomic_open(path) as f:
        f.write(page(result, [x for x in figures if x], importances))


def param_importances(study, optuna) -> dict[str, float]:
    """Each option's share of the variance of the value among completed trials (fANOVA); {} with fewer than two
    completed trials or a space of one value."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial had the same options
        log.info("option importances not computed: %s", e)
        return {}


def history_figure(result: dict, path: str) -> str | None:
    done = [(r["number"], r["value"]) for r in result["trials"] if r["state"] == "complete"]
    if not done:
        return None
    fig = new_figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    xs, ys = zip(*done, strict=True)
    pick = min if result["direction"] == "minimize" else max
    best = [pick(ys[: i + 1]) for i in range(len(ys))]
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best, where="post", label="best so far")
    pruned = [r["number"] for r in result["trials"] if r["state"] == "pruned"]
    if pruned:
        ax.plot(pruned, [min(ys)] * len(pruned), "x", color="grey", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(result["monitor"])
    ax.legend()
    save_figure(fig, path)
    return os.path.basename(path)


def curves_figure(result: dict, path: str) -> str | None:
    ranked = [r for r in result["trials"] if r["value"] is not None and r.get("run_dir")]
    ranked.sort(key=lambda r: r["value"], reverse=result["direction"] == "maximize")
    fig = new_figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    drawn = 0
    for r in ranked[:BEST_CURVES]:
        values = monitored(r["run_dir"], result["monitor"])
        if values:
            ax.plot(range(1, len(values) + 1), values, marker=".", label=f"trial {r['number']}")
            drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(result["monitor"])
    ax.legend()
    save_figure(fig, path)
    return os.path.basename(path)


def monitored(run_dir: str, monitor: str) -> list[float]:
    try:
        with open(os.path.join(run_dir, "metrics.csv"), newline="", encoding="utf-8") as f:
            values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    except (OSError, KeyError, ValueError):
        return []
    return [v for v in values if math.isfinite(v)]


def importance_figure(importances: dict[str, float], path: str) -> str:
    fig = new_figure(figsize=(6.4, 0.4 * len(importances) + 1.2))
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    save_figure(fig, path)
    return os.path.basename(path)


def trial_html(r: dict) -> str:
    e = html.escape
    value = "" if r["value"] is None else f"{r['value']:.4f}"
    options = ", ".join(f"{k}={v}" for k, v in r["params"].items())
    return (
        f"<tr><td>{r['number']}</td><td>{e(r['state'])}</td><td>{value}</td><td>{r['epochs']}</td>"
        f"<td>{e(options)}</td><td>{e(r.get('why', ''))}</td></tr>"
    )


def page(result: dict, figures: list[str], importances: dict[str, float]) -> str:
    e = html.escape
    best = result["best"]
    head = (
        f"best: trial {best['number']}, {e(result['monitor'])} {best['value']:.4f}; "
        f"<code>imgclf train --config {e(best['config'])}</code>"
        if best
        else "no trial completed"
    )
    rows = "".join(trial_html(r) for r in result["trials"])
    imp = "".join(f"<tr><td>{e(k)}</td><td>{v:.3f}</td></tr>" for k, v in importances.items())
    imgs = "".join(f'<p><img src="{e(name)}" alt="{e(name)}"></p>' for name in figures)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>imgclf tune</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}</style></head><body>"
        f"<h1>imgclf tune: {e(result['folder'])}</h1><p>{head}</p>"
        f"<p>{len(result['trials'])} trials in {result['seconds']:.0f} s, {e(result['direction'])} "
        f"{e(result['monitor'])}</p>{imgs}"
        + (f"<h2>Option importances</h2><table>{imp}</table>" if imp else "")
        + "<h2>Trials</h2><table><tr><th>trial</th><th>state</th><th>value</th><th>epochs</th><th>options</th>"
        f"<th>why</th></tr>{rows}</table></body></html>"
    )
