"""A run's data, opened once: the source and its split, the preprocessing, the decoded feeds, what was left out;
and the refusal to resume on data other than the run's."""

from __future__ import annotations

import csv
import logging
import os
import time

from imgclf.core.artifact import Preprocess
from imgclf.core.errors import DataError, UsageError
from imgclf.core.escape import csv_value
from imgclf.data.feed import make_feed
from imgclf.data.fixes import Applied, apply_fixes, read_fixes
from imgclf.data.pipeline import common_size, resolve_preprocess
from imgclf.data.sources import finish_split, open_source
from imgclf.training.distill import open_teacher
from imgclf.training.fits import check_run_memory
from imgclf.training.plan import RunData, RunPlan

log = logging.getLogger(__name__)

FIXES_APPLIED = "fixes_applied.csv"  # the rows --apply-fixes applied, in the run folder


def open_run_data(plan: RunPlan) -> RunData:
    """The data of `plan`, decoded once; files that cannot be read are left out and listed, and the run goes on."""
    opened_at, cfg = time.perf_counter(), plan.cfg
    src, fixes = open_fixed_source(cfg)
    if plan.resumed:
        check_same_fixes_applied(cfg.resume, fixes)
        check_same_data(cfg.resume, plan.resume, src, None)
        prep = Preprocess.from_dict(plan.resume["preprocess"])
    else:
        prep = preprocess_for(plan, src)
    # the teacher's classes against the data's: refused before anything is decoded (each rank opens its own)
    teacher = open_teacher(cfg, src.classes, prep, plan.device) if cfg.teacher else None
    counts = (len(src.splits["train"]), len(src.splits["val"]))
    check_run_memory(plan, prep, counts, len(src.classes))  # before anything is decoded: refused or warned
    left_out, feeds = [], {}
    for name in ("train", "val"):
        feed, bad = make_feed(
            src.splits[name],
            prep,
            cache=cfg.cache,
            workers=max(1, cfg.workers),
            augment=cfg.augment,
            batch_size=cfg.batch_size,
            eval_batch_size=max(cfg.batch_size, 256),
            brightness=cfg.brightness,
            contrast=cfg.contrast,
            randaugment=cfg.randaugment,
            desc=f"decode {name}",
        )
        if len(feed) == 0:
            raise UsageError(
                f"no readable images left in the {name} split of {cfg.data}; `imgclf check` lists the problems"
            )
        src.splits[name], feeds[name] = feed.split, feed
        left_out += [(name, p, r) for p, r in bad]
    if plan.resumed:  # compared as saved: after the unreadable files were left out
        split_csv = os.path.join(os.path.dirname(os.path.abspath(cfg.resume)), "split.csv")
        check_same_data(cfg.resume, plan.resume, src, split_csv)
    for note in src.notes:  # after the last refusal: a refused command prints one line
        log.info("%s", note)
    if fixes is not None and fixes.warning:
        log.warning("%s", fixes.warning)
    warn_group_leaks(src.grouping)
    return RunData(src, prep, feeds["train"], feeds["val"], left_out, src.fingerprint(), opened_at, fixes, teacher)


def open_checked_source(cfg):
    """The data `--data` names, listed (not decoded), with its validation split: refused in one line when it is not
    found, unreadable as a source, or of one class. `--nproc` runs it before torchrun starts (api.preflight)."""
    return open_fixed_source(cfg)[0]


def open_fixed_source(cfg) -> tuple:
    """(the source, what --apply-fixes did to it or None): open_checked_source's source, with the fixes applied to
    every split before validation is carved from train (by --group-by's groups and the fixes' near-duplicate
    clusters, each kept on one side)."""
    task = None if cfg.task == "auto" else cfg.task  # resolved by plan.resolve: the data's own, or as asked
    src = open_source(
        cfg.data, data_root=cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.seed, carve=False, task=task
    )
    fixes = apply_fixes(src, read_fixes(cfg.apply_fixes, src.classes), warn=False) if cfg.apply_fixes else None
    finish_split(
        src,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        group_by=cfg.group_by,
        clusters=fixes.clusters if fixes is not None else None,
    )
    if len(src.classes) < 2:
        raise DataError(
            f"{src.location} has one class, '{src.classes[0]}': a classifier needs at least two; "
            "add a folder of images for each other class beside it"
        )
    return src, fixes


def check_same_fixes_applied(resume: str, fixes: Applied | None) -> None:
    """A resumed run applies the rows it started with: its fixes_applied.csv, against what the fixes file gives
    now (edited since the run started: refused in one line)."""
    kept = os.path.join(os.path.dirname(os.path.abspath(resume)), FIXES_APPLIED)
    if fixes is None or not os.path.isfile(kept):
        return
    before = [r for _, r in read_fixes(kept).rows]
    if before != fixes.rows:
        raise DataError(
            f"--apply-fixes {fixes.file} changed since '{resume}' started (its {FIXES_APPLIED} holds {len(before)} "
            f"rows applied, the file now gives {len(fixes.rows)}{' others' if len(before) == len(fixes.rows) else ''}): "
            "restore the file to resume, or start a new run with it"
        )


def warn_group_leaks(grouping: dict | None) -> None:
    """--group-by on data with its own val split: that split is kept, and the groups it puts on both sides said."""
    if not grouping or not grouping["on_several_splits"]:
        return
    log.warning(
        "--group-by %s: the data's own split puts %d of its %d groups on more than one split (e.g. %s): "
        "validation scores will be optimistic; move each group to one split (`imgclf check DATA --group-by` "
        "lists them), or remove the val split and let imgclf carve one by group",
        grouping["by"],
        grouping["on_several_splits"],
        grouping["groups"],
        ", ".join(f"'{g}'" for g in grouping["examples"]),
    )


def preprocess_for(plan: RunPlan, src) -> Preprocess:
    """The preprocessing of a new run: the model's, at --img-size, the pretrained size, or the data's own."""
    cfg, spec = plan.cfg, plan.spec
    own = None if (cfg.img_size or cfg.pretrained) else common_size(src.splits["train"], cfg.workers or 1)
    if own is not None and own < spec.min_img_size:
        log.info(
            "the images are %d px, below the %d px that %s takes: they are upscaled to %d px",
            own,
            spec.min_img_size,
            cfg.model,
            spec.min_img_size,
        )
        own = spec.min_img_size
    return resolve_preprocess(spec, img_size=cfg.img_size, pretrained=cfg.pretrained, own_size=own)


def check_same_data(resume: str, ckpt: dict, src, split_csv: str | None) -> None:
    """Refuse to resume on data other than the run's: its metrics, best epoch and split would mix two datasets.
    Called twice: with the class names before decoding (cheap), then with the fingerprint after (`split_csv`
    given), which is computed as saved, once unreadable files are left out."""
    changed = None
    old = list(ckpt.get("classes") or [])
    if old and old != list(src.classes):
        added, removed = sorted(set(src.classes) - set(old)), sorted(set(old) - set(src.classes))
        parts = [
            f"classes added: {', '.join(added)}" if added else "",
            f"classes removed: {', '.join(removed)}" if removed else "",
        ]
        changed = "; ".join(p for p in parts if p) or "class order differs"
    elif split_csv is not None and ckpt.get("data_fingerprint") not in (None, src.fingerprint()):
        changed = what_changed(src, split_csv)
    if changed:
        raise DataError(
            f"the data changed since '{resume}' was saved ({changed}): resuming would mix two validation "
            "sets; start a new run (without --resume), or restore the original data to resume"
        )


def what_changed(src, split_csv: str) -> str:
    if not os.path.exists(split_csv):
        return "files were added, removed or modified"
    with open(split_csv, newline="") as f:
        before = {csv_value(r["path"]) for r in csv.DictReader(f)}
    now = {s.describe(i) for s in src.splits.values() for i in range(len(s))}
    added, removed = len(now - before), len(before - now)
    return (
        f"{added} file{'s' * (added != 1)} added, {removed} removed"
        if before != now
        else "the same files, but some of them modified"
    )
