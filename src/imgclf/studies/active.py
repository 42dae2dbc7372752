"""Active learning: which unlabelled images to label next (`select`), and the loop simulated on labelled data
(`simulate`), to see whether a strategy beats labelling at random.

The strategies (entropy, margin, least-confidence, random, diverse) are in strategies.py; the pool and its
scores in pool.py; the simulation's features, loop and summary in simulation.py; the contact sheet and the
learning curves in figures.py.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field

from imgclf.core.errors import CheckpointError, DataError, UsageError
from imgclf.core.escape import csv_cell
from imgclf.core.fileio import atomic_open
from imgclf.core.multilabel import MULTILABEL, SINGLE, join_labels, label_set
from imgclf.core.options import check_output_folder
from imgclf.data.sources import open_source
from imgclf.infer.predict import Predictor
from imgclf.studies.audit.features import FeatureModel
from imgclf.studies.figures import contact_sheet, plot_learning_curves
from imgclf.studies.pool import read_labelled, read_pool, score_pool
from imgclf.studies.simulation import (
    cached_features,
    check_sizes,
    run_all,
    subset,
    summarise,
    versus_random,
    write_rows,
)
from imgclf.studies.strategies import DIVERSE_PREFILTER, STRATEGIES, meaning, rank, scores

__all__ = [
    "DIVERSE_PREFILTER",
    "STRATEGIES",
    "Selection",
    "SimResult",
    "format_selection",
    "format_simulation",
    "select",
    "simulate",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- select


@dataclass
class Selection:
    strategy: str
    rows: list[dict]  # path, score, predicted_label, probability: in the order asked
    scored: int  # readable, unlabelled pool images scored
    excluded: int  # pool images left out as already labelled
    unreadable: list = field(default_factory=list)  # [(path, reason)]
    out: str = ""
    csv: str = ""
    sheet: str = ""
    task: str = SINGLE


def select(
    weights: str,
    pool: str,
    *,
    budget: int,
    strategy: str = "entropy",
    exclude=(),
    out: str | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
) -> Selection:
    """Pick `budget` images of `pool` to label next; writes OUT/selected.csv and OUT/contact_sheet.png."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    if int(budget) < 1:
        raise UsageError(f"--budget must be at least 1, got {budget}")
    paths = read_pool(pool)
    labelled = read_labelled(exclude)
    todo = [p for p in paths if os.path.realpath(p) not in labelled]
    if not todo:
        raise DataError(f"every one of the {len(paths)} images of pool '{pool}' is already labelled (--exclude)")
    out = out or os.path.join(os.path.dirname(os.path.abspath(str(weights))), f"select-{strategy}")
    check_output_folder(out, "--out")
    pred = Predictor(weights, device=device, batch_size=batch_size, precision=precision)
    if strategy == "diverse" and pred.runner.format != "checkpoint":
        raise CheckpointError(
            f"--strategy diverse clusters the model's penultimate features, which a {pred.runner.format} file does "
            "not expose: pass the checkpoint it was exported from, or use entropy, margin or least-confidence"
        )
    probs, feats, ok, bad = score_pool(pred, todo, features=strategy == "diverse")
    for p, why in bad:
        log.warning("skipped %s: %s", p, why)
    if not ok:
        raise DataError(f"none of the {len(todo)} unlabelled pool images could be read (each is listed above)")
    task = pred.runner.task
    order = rank(probs, strategy, budget, features=feats, seed=seed, task=task)
    s = scores(probs, strategy, task)
    rows = [
        {
            "path": ok[i],
            "score": float(s[i]),
            "predicted_label": _predicted(pred.runner, probs[i]),
            "probability": float(probs[i].max()),
        }
        for i in order
    ]
    sel = Selection(strategy, rows, len(ok), len(paths) - len(todo), bad, out, task=task)
    _write_selection(sel, budget)
    return sel


def _predicted(runner, p) -> str:
    """The top class; a multi-label model's label set at its thresholds ("a|b", "" for none)."""
    if runner.task == MULTILABEL:
        return join_labels(label_set(p, runner.thresholds, runner.classes))
    return runner.classes[int(p.argmax())]


def _write_selection(sel: Selection, budget: int) -> None:
    os.makedirs(sel.out, exist_ok=True)
    sel.csv = os.path.join(sel.out, "selected.csv")
    with atomic_open(sel.csv, newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "score", "predicted_label", "probability"])
        for r in sel.rows:
            row = [csv_cell(r["path"]), f"{r['score']:.6f}", csv_cell(r["predicted_label"]), f"{r['probability']:.6f}"]
            w.writerow(row)
    if sel.unreadable:
        with atomic_open(os.path.join(sel.out, "unreadable.csv"), newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason"])
            w.writerows([csv_cell(p), csv_cell(why)] for p, why in sel.unreadable)
    sel.sheet = os.path.join(sel.out, "contact_sheet.png")
    if len(sel.rows) < budget:
        log.warning(
            "the pool has only %d readable unlabelled images, fewer than --budget %d: all of them are selected",
            len(sel.rows),
            budget,
        )
    contact_sheet(sel.rows, sel.sheet, title=f"{len(sel.rows)} images to label next ({sel.strategy})")


def format_selection(sel: Selection) -> str:
    lines = [
        f"selected {len(sel.rows)} of {sel.scored} unlabelled pool images by {sel.strategy} "
        f"({sel.excluded} already labelled, {len(sel.unreadable)} unreadable and skipped)",
        f"score: {meaning(sel.strategy, sel.task)}",
        f"wrote {sel.csv} and {sel.sheet}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the simulation


@dataclass
class SimResult:
    rows: list[dict]  # strategy, seed, round, labels, accuracy
    summary: list[dict]  # strategy, round, labels, mean, std, min, max, seeds
    versus_random: list[dict]  # strategy, rounds, mean_diff, wins, pairs
    setup: dict
    csv: str = ""
    summary_csv: str = ""
    plot: str = ""


def simulate(
    data: str,
    *,
    strategies=("entropy", "margin", "diverse", "random"),
    start: int = 20,
    budget: int = 20,
    rounds: int = 5,
    seeds: int = 3,
    features: str = "efficientnet_lite0",
    img_size: int | None = None,
    pool_size: int | None = None,
    eval_size: int | None = None,
    eval_split: str | None = None,
    start_mode: str = "stratified",
    out: str = os.path.join("runs", "active-sim"),
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    data_root: str | None = None,
) -> SimResult:
    """The active-learning loop on labelled data: from `start` labels of the train split, each round fit a
    logistic regression on frozen features of the labelled images, pick `budget` more by a strategy, reveal
    their labels; accuracy on the eval split each round, for each strategy and `seeds` seeds. The features
    (computed once: a pretrained registry model, or a checkpoint's penultimate layer) are cached in OUT."""
    strategies = _check_sim_args(strategies, start, budget, rounds, seeds, start_mode)
    FeatureModel.check(features)
    src = open_source(data, data_root=data_root, seed=seed)
    if src.task == MULTILABEL:
        raise UsageError(
            f"{data} is multi-label data: the simulation fits a single-label classifier and counts accuracy; use "
            "imgclf select with a multi-label model instead"
        )
    eval_split = eval_split or src.held_out_split()
    if eval_split == "train":
        raise UsageError("--eval-split train is the pool the simulation labels: measure on val or test")
    pool = subset(src.split("train"), pool_size, seed, "--pool-size")
    ev = subset(src.split(eval_split), eval_size, seed, "--eval-size")
    check_sizes(len(pool), len(src.classes), start=start, budget=budget, rounds=rounds, start_mode=start_mode)
    check_output_folder(out, "--out")
    extractor = FeatureModel.open(features, len(src.classes), img_size=img_size, device=device)
    os.makedirs(out, exist_ok=True)
    x, y, xe, ye = cached_features(extractor, pool, ev, out, batch_size=batch_size)
    setup = {
        "data": src.location,
        "features": extractor.label,
        "preprocess": extractor.prep.to_dict(),
        "pool": len(y),
        "eval_split": eval_split,
        "eval": len(ye),
        "classes": len(src.classes),
        **dict(start=start, start_mode=start_mode, budget=budget, rounds=rounds, seeds=seeds, seed=seed),
        "classifier": "scikit-learn LogisticRegression (lbfgs, C=1) on standardised features",
    }
    rows = run_all(x, y, xe, ye, strategies, setup)
    return _finish(rows, setup, out)


def _check_sim_args(strategies, start, budget, rounds, seeds, start_mode) -> list[str]:
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise UsageError(
            f"--strategies: unknown '{unknown[0] if unknown else ''}': a comma-separated list of {', '.join(STRATEGIES)}"
        )
    for flag, v in (("--start", start), ("--budget", budget), ("--rounds", rounds), ("--seeds", seeds)):
        if int(v) < 1:
            raise UsageError(f"{flag} must be at least 1, got {v}")
    if start_mode not in ("stratified", "random"):
        raise UsageError(f"--start-mode must be stratified or random, not '{start_mode}'")
    return list(dict.fromkeys(strategies))


def _finish(rows: list[dict], setup: dict, out: str) -> SimResult:
    res = SimResult(rows, summarise(rows), versus_random(rows, after=min(2, setup["rounds"])), setup)
    res.csv, res.summary_csv = os.path.join(out, "active_sim.csv"), os.path.join(out, "active_sim_summary.csv")
    write_rows(rows, res.csv, ["strategy", "seed", "round", "labels", "accuracy"])
    write_rows(res.summary, res.summary_csv, ["strategy", "round", "labels", "mean", "std", "min", "max", "seeds"])
    with atomic_open(os.path.join(out, "active_sim.json")) as f:
        json.dump({"setup": setup, "summary": res.summary, "versus_random": res.versus_random}, f, indent=2)
    res.plot = os.path.join(out, "active_sim.png")
    plot_learning_curves(res.summary, res.plot, title=_plot_title(setup))
    return res


def _plot_title(setup: dict) -> str:
    return (
        f"{os.path.basename(setup['data'].rstrip(os.sep))}: {setup['features']}, pool {setup['pool']}, "
        f"{setup['eval_split']} {setup['eval']} images; {setup['seeds']} seeds (mean, band: min-max)"
    )


def format_simulation(res: SimResult) -> str:
    """The summary as a table (mean +- std [min-max] per strategy at each number of labels) and the verdicts."""
    st = res.setup
    strategies = list(dict.fromkeys(r["strategy"] for r in res.summary))
    cell = {(r["strategy"], r["labels"]): r for r in res.summary}
    labels = sorted({r["labels"] for r in res.summary})
    lines = [
        f"{st['data']}: pool {st['pool']} images, {st['eval_split']} {st['eval']} images, features {st['features']}; "
        f"accuracy over {st['seeds']} seeds: mean +- std [min-max]",
        f"{'labels':>6}  " + "  ".join(f"{s:<27}" for s in strategies),
    ]
    for n in labels:
        cells = []
        for s in strategies:
            r = cell.get((s, n))
            cells.append(f"{r['mean']:.3f} +-{r['std']:.3f} [{r['min']:.3f}-{r['max']:.3f}]" if r else "-")
        lines.append(f"{n:>6}  " + "  ".join(f"{c:<27}" for c in cells))
    for v in res.versus_random:
        lines.append(
            f"{v['strategy']} vs random from round {v['from_round']} on, at equal labels: "
            f"{100 * v['mean_diff']:+.1f} points on average, ahead in {v['wins']} of {v['pairs']} "
            f"(seed, round) pairs" + (f", level in {v['ties']}" if v["ties"] else "")
        )
    lines.append(f"wrote {res.csv}, {res.summary_csv} and {res.plot}")
    return "\n".join(lines)
