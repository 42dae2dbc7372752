"""Curriculum learning (`imgclf train --curriculum easy-first|hard-first --pacing linear|root|step`) and the
difficulty scores it orders by (`imgclf score WEIGHTS --data D`).

A training image's difficulty is a reference model's cross-entropy loss on it, without augmentation (Hacohen and
Weinshall, ICML 2019, "On the power of curriculum learning in training deep networks", score by a reference
network; Wu, Dyer and Neyshabur, ICLR 2021, "When do curricula work?", score by loss). The images are ranked by
it (easy-first: lowest loss first; hard-first: highest first; ties by index), and the batch at optimisation step
t is drawn uniformly, with replacement, from the first g(t / T) of the ranking, T the run's steps. The pacing
function g grows from b = --pacing-start to 1 at a = --pacing-full of the steps:

    linear  g(p) = b + (1 - b) p / a
    root    g(p) = sqrt(b^2 + (1 - b^2) p / a)     (Platanios et al., NAACL 2019, "competence-based" root-2)
    step    g(p) = b + (1 - b) floor(4 p / a) / 4  (four equal steps, after Hacohen and Weinshall's staircase)

capped at 1. An epoch keeps its usual number of steps; once every image is in the pool, epochs are the usual
permutations again. The pool follows the step as training goes (a --time-budget that sets the run's length mid-epoch
is followed too), and the draw comes from the epoch's generator, so a resumed run draws the same batches; the
difficulties are kept in the checkpoint. The Trainer's side is the Curriculum callback
(training/callbacks/curriculum.py).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imgclf.core.errors import DataError
from imgclf.core.escape import csv_cell, csv_value
from imgclf.core.fileio import atomic_open, open_text
from imgclf.core.options import check_output_folder
from imgclf.data.feed import make_feed
from imgclf.data.pipeline import default_workers
from imgclf.infer.logits import align_classes, infer, open_model_data
from imgclf.infer.runtime import open_model
from imgclf.training.options import DIFFICULTY_FIX

log = logging.getLogger(__name__)

STEP_STAIRS = 4


def pace(kind: str, progress: torch.Tensor, start: float, full: float) -> torch.Tensor:
    """The fraction of the ranking in the pool at `progress` (steps done / steps in all, a tensor)."""
    p = (progress / full).clamp(0.0, 1.0)
    if kind == "linear":
        g = start + (1 - start) * p
    elif kind == "root":
        g = torch.sqrt(start**2 + (1 - start**2) * p)
    elif kind == "step":
        g = start + (1 - start) * torch.floor(p * STEP_STAIRS) / STEP_STAIRS
    else:
        raise ValueError(f"pacing must be linear, root or step, not '{kind}'")
    return g.clamp(max=1.0)


def ranking(difficulty: torch.Tensor, mode: str) -> torch.Tensor:
    """Image indices from the first to be trained on to the last: by difficulty, ties by index."""
    d = difficulty.double()
    key = d if mode == "easy-first" else -d
    return torch.from_numpy(key.numpy().argsort(kind="stable"))


class PacedOrder:
    """One epoch's order under a curriculum, worked out as it is read: this rank's k-th image is trained at step
    step0 + k // per_step, when the pool is the first pool(step) images of the ranking; it is the one at
    floor(u_k * pool) of them, u_k uniform from the epoch's generator. A DataLoader can take it as its sampler."""

    def __init__(self, ranked: torch.Tensor, u: torch.Tensor, step0: int, per_step: int, pool):
        self.ranked, self.u, self.step0, self.per_step, self.pool = ranked, u, step0, per_step, pool

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, k) -> torch.Tensor:
        pos = torch.arange(len(self.u))[k]
        size = self.pool(self.step0 + pos // self.per_step)
        return self.ranked[torch.minimum((self.u[pos] * size).long(), size - 1)]

    def __iter__(self):
        for start in range(0, len(self), self.per_step):  # one step's images at a time, each when it is drawn
            yield from self[start : start + self.per_step].tolist()


# --------------------------------------------------------------------------------------------- difficulty files


def image_key(split, i: int) -> str:
    """How a difficulty file names image i of `split`: its absolute path, or its id for in-memory images."""
    if split.paths is not None:
        return os.path.abspath(split.paths[i])
    return split.describe(i)


def read_difficulty(path: str, split) -> torch.Tensor:
    """Each image of `split`'s difficulty from a CSV with columns path and loss (or difficulty); paths relative to
    the CSV's folder, or the ids of in-memory images (digits:17)."""
    if not os.path.isfile(path):
        raise DataError(
            f"--difficulty '{path}' not found: give a CSV of path,loss (`imgclf score WEIGHTS --data D` writes "
            "one) or auto"
        )
    here = os.path.dirname(os.path.abspath(path))  # relative paths are relative to the CSV, as in a manifest
    with open_text(path, "--difficulty", fix=DIFFICULTY_FIX, newline="", error=DataError) as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        column = "loss" if "loss" in fields else "difficulty" if "difficulty" in fields else None
        if "path" not in fields or column is None:
            raise DataError(f"--difficulty '{path}' needs columns path and loss (or difficulty); it has {fields}")
        scores = {}
        for row in reader:
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                raise DataError(f"--difficulty '{path}': '{row[column]}' for {row['path']} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"--difficulty '{path}': {row['path']} has difficulty {value}; give a finite number")
            p = csv_value(row["path"])  # as `score` wrote it (csv_cell)
            scores[p if split.paths is None else os.path.abspath(os.path.join(here, p))] = value
    keys = [image_key(split, i) for i in range(len(split))]
    missing = [k for k in keys if k not in scores]
    if missing:
        raise DataError(
            f"--difficulty '{path}' scores {len(keys) - len(missing)} of the {len(keys)} training images "
            f"(not {missing[0]}); score this data with `imgclf score WEIGHTS --data ...`"
        )
    return torch.tensor([scores[k] for k in keys], dtype=torch.float32)


# --------------------------------------------------------------------------------------------- scoring


def reference_difficulty(cfg, split, run_path: str, train: Callable) -> torch.Tensor:
    """--difficulty auto: each training image's, from a short reference run of the same options without the
    curriculum (OUT/NAME-reference: one epoch, or a fifth of --time-budget or --max-steps) that `train` trains,
    scored as `imgclf score` scores."""
    short = {"time_budget": cfg.time_budget / 5} if cfg.time_budget else {"epochs": 1}
    if cfg.max_steps:
        short["max_steps"] = max(1, cfg.max_steps // 5)
    # replace(): these count as set, so the recipe does not put its own epochs back
    ref = cfg.replace(
        curriculum="none", name=os.path.basename(run_path) + "-reference", out=os.path.dirname(run_path), **short
    )
    log.info(
        "--difficulty auto: a reference run first (%s)",
        ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in short.items()),
    )
    result = train(ref)
    best = os.path.join(result["run_dir"], "best.pt")
    runner = open_model(best, device=cfg.device)
    kept, _, losses, _, bad = score_split(
        runner,
        split,
        runner.classes,
        batch_size=256,
        workers=default_workers() if cfg.workers is None else cfg.workers,
        cache=cfg.cache,
        desc="score train",
    )
    if bad or len(kept) != len(split):
        raise DataError(f"--difficulty auto: {len(bad)} training images could not be scored again")
    log.info("--difficulty auto: training images scored by %s (mean loss %.4f)", best, float(losses.mean()))
    return losses.float()


def score_split(runner, split, classes: list[str], *, batch_size: int, workers: int, cache: str, desc: str):
    """(the readable images, labels, losses, probabilities, left out) of every image of `split` under `runner` (any format `evaluate` reads),
    without augmentation: the per-image cross-entropy against its label. Left-out (unreadable) images score NaN."""
    mapping = torch.as_tensor(align_classes(classes, runner.classes, desc), dtype=torch.long)
    feed, bad = make_feed(split, runner.preprocess, cache=cache, workers=max(1, workers), eval_batch_size=batch_size)
    logits, labels = infer(runner, feed.batches(), desc=desc)
    labels = mapping[labels]
    losses = F.cross_entropy(logits, labels, reduction="none")
    prob = logits.softmax(1)
    return feed.split, labels, losses, prob, bad  # the feed's split: the readable images


def score(
    weights: str,
    data: str | None = None,
    *,
    out: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    data_root: str | None = None,
    cache: str = "auto",
) -> dict:
    """Write each training image's difficulty (`imgclf score`): the loss of the model in `weights` on it, as a CSV
    path,label,split,loss,p_true,predicted,confidence (default: difficulty.csv next to the weights). The training
    images are the train split, and the validation images carved from it when the data has no val split of its
    own (another seed carves others). Returns {"out", "images", "mean_loss", "left_out"}."""
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), "difficulty.csv")
    check_output_folder(os.path.dirname(os.path.abspath(out)), "--out")
    runner = open_model(weights, device=device)
    src, _ = open_model_data(runner.config, data, "train", data_root)
    names = ["train"] + (["val"] if src.val_origin == "carved" else [])
    workers = default_workers() if workers is None else workers
    rows, left_out = [], []
    for name in names:
        split, labels, losses, prob, bad = score_split(
            runner,
            src.splits[name],
            src.classes,
            batch_size=batch_size,
            workers=workers,
            cache=cache,
            desc=f"score {name}",
        )
        left_out += bad
        conf, pred = prob.max(1)
        for i in range(len(split)):
            rows.append(
                [
                    csv_cell(image_key(split, i)),
                    csv_cell(runner.classes[int(labels[i])]),
                    name,
                    f"{float(losses[i]):.6g}",
                    f"{float(prob[i, labels[i]]):.6g}",
                    csv_cell(runner.classes[int(pred[i])]),
                    f"{float(conf[i]):.6g}",
                ]
            )
    with atomic_open(out, newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "loss", "p_true", "predicted", "confidence"])
        w.writerows(rows)
    mean = sum(float(r[3]) for r in rows) / max(1, len(rows))
    return {"out": out, "images": len(rows), "mean_loss": mean, "left_out": left_out}
