"""CIFAR-10 from scratch: test accuracy against the time budget, `imgclf train --recipe fast` and the seed's recipe.

For each budget (minutes) and seed, interleaved on the same machine: `imgclf train --recipe fast --time-budget B
--seed S` then `imgclf evaluate best.pt --split test`, and the seed's recipe (../shared/bench/seed_recipe.py:
ResNet-18, SGD 0.01, StepLR, batch 128) given the same minutes: its test accuracy after the last epoch that ended
within them (None where none did). Both are benchmarks/fast_recipe.py's, run as there. Each point is appended to
the JSON file as soon as it is measured; run the same command again after a stop and only the missing points run.
The plot (PNG: each run a dot, the mean of the seeds a line) is drawn from the JSON file after each point.

    .venv/bin/python benchmarks/budget_curve.py [--data ../shared/data/cifar10-jpg] [--budgets 2,5,10,15,30]
        [--seeds 0,1,2] [--json budget_curve.json] [--png docs/img/budget_curve.png] [--subset N] [--plot-only]

--subset N: N training, N // 4 validation and N test images of each class (symlinks in a temporary folder), to see
that it works.
Run the real curve on an otherwise idle machine: both sides are timed by wall clock (5 x 3 x (B + set-up and
evaluation) minutes: about 3.5 hours at the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, run as a script
from fast_recipe import SHARED, imgclf_within, seed_within

from imgclf.compute.machine import env_block
from imgclf.evaluation.plots import new_figure, save_figure

RECIPES = {"fast": "imgclf --recipe fast", "seed": "seed recipe (ResNet-18, SGD, StepLR)"}


def numbers(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def subset_of(data: str, n: int, into: str) -> str:
    """A small copy of `data` as symlinks under `into`: the first `n` images of each class in train/ and test/,
    and the next n // 4 (at least 2) training images in val/ (2% of a small subset would not hold every class)."""
    parts = {"train": ("train", 0, n), "val": ("train", n, n + max(2, n // 4)), "test": ("test", 0, n)}
    for split, (origin, start, end) in parts.items():
        for cls in sorted(os.listdir(os.path.join(data, origin))):
            src = os.path.join(data, origin, cls)
            dst = os.path.join(into, split, cls)
            os.makedirs(dst)
            for name in sorted(os.listdir(src))[start:end]:
                os.symlink(os.path.join(src, name), os.path.join(dst, name))
    return into


def load(path: str, data: str, subset: int | None) -> dict:
    """The points measured so far (a new record if none): for this data and subset only."""
    if not os.path.exists(path):
        return {"data": data, "subset": subset, "points": []}
    record = json.load(open(path))
    if (record.get("data"), record.get("subset")) != (data, subset):
        sys.exit(
            f"{path} holds points of --data {record.get('data')} --subset {record.get('subset')}: "
            "pass --json with another file for this data"
        )
    return record


def save(path: str, record: dict) -> None:
    """Write the record whole (a temporary file renamed over it: a stop never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def measure(recipe: str, data: str, minutes: float, seed: int) -> dict:
    if recipe == "fast":
        acc, train_s, res = imgclf_within(data, minutes, seed)
        detail = {k: res.get(k) for k in ("steps", "epochs", "setup_seconds", "time_budget", "precision")}
        return {"test_accuracy": acc, "train_seconds": train_s, **detail}
    acc, epoch, elapsed = seed_within(data, minutes)  # the seed's recipe takes no seed: a repetition
    return {"test_accuracy": acc, "epochs": epoch, "train_seconds": elapsed}


def plot(record: dict, png: str) -> None:
    """Each run a dot, the mean of the seeds a line; a run with no epoch ended in its budget an x at chance."""
    fig = new_figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    chance = 100 / max(1, len(record.get("classes") or range(10)))
    for recipe, label in RECIPES.items():
        pts = [p for p in record["points"] if p["recipe"] == recipe]
        done = [p for p in pts if p["test_accuracy"] is not None]
        budgets = sorted({p["budget"] for p in done})
        means = [100 * statistics.mean(p["test_accuracy"] for p in done if p["budget"] == b) for b in budgets]
        (line,) = ax.plot(budgets, means, marker="o", label=f"{label}, mean of seeds" if done else "_nolegend_")
        ax.scatter(
            [p["budget"] for p in done],
            [100 * p["test_accuracy"] for p in done],
            s=14,
            alpha=0.5,
            color=line.get_color(),
        )
        missed = [p["budget"] for p in pts if p["test_accuracy"] is None]
        if missed:
            ax.scatter(
                missed,
                [chance] * len(missed),
                marker="x",
                color=line.get_color(),
                label=f"{label}: no epoch ended within the budget",
            )
    ticks = sorted({p["budget"] for p in record["points"]})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("time budget (minutes of training)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("accuracy against budget" + (f" (subset {record['subset']}/class)" if record["subset"] else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10-jpg"))
    ap.add_argument("--budgets", default="2,5,10,15,30", help="minutes, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default="budget_curve.json", help="the points, appended as they are measured")
    ap.add_argument("--png", default="docs/img/budget_curve.png")
    ap.add_argument("--subset", type=int, default=None, help="N images of each class per split (a quick check)")
    ap.add_argument("--plot-only", action="store_true", help="draw the PNG from the JSON file and stop")
    args = ap.parse_args()
    budgets, seeds = numbers(args.budgets), numbers(args.seeds, int)
    data = os.path.abspath(args.data)
    record = load(args.json, data, args.subset)
    if args.plot_only:
        return plot(record, args.png)
    print(env_block(), flush=True)
    record.setdefault("env", env_block())
    done = {(p["recipe"], p["budget"], p["seed"]) for p in record["points"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = subset_of(data, args.subset, tmp) if args.subset else data
        for minutes in budgets:
            for seed in seeds:
                for recipe in RECIPES:
                    if (recipe, minutes, seed) in done:
                        continue
                    point = {"recipe": recipe, "budget": minutes, "seed": seed, **measure(recipe, root, minutes, seed)}
                    record["points"].append(point)
                    save(args.json, record)
                    plot(record, args.png)
                    acc = point["test_accuracy"]
                    shown = "no epoch within the budget" if acc is None else f"test accuracy {acc:.4f}"
                    print(f"{minutes:g} min, seed {seed}, {RECIPES[recipe]}: {shown}", flush=True)
    for recipe, label in RECIPES.items():
        for minutes in budgets:
            accs = [p["test_accuracy"] for p in record["points"] if (p["recipe"], p["budget"]) == (recipe, minutes)]
            kept = [a for a in accs if a is not None]
            mean = f"{100 * statistics.mean(kept):.2f}%" if kept else "-"
            print(f"{label:40s} {minutes:5g} min: mean test accuracy {mean} ({len(kept)} of {len(accs)} runs)")
    print(f"points: {args.json}; plot: {args.png}")


if __name__ == "__main__":
    main()
