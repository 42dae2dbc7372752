"""A model's logits over data: batches of a feed (`infer`), shared among torchrun's ranks (`infer_sharded`), or a
split of the data a model was trained on, opened as its training opened it (`split_logits`).

`model` is an nn.Module or a runtime.Runner; training, evaluation, calibration, exports, features and robustness
all measure through these.
"""

from __future__ import annotations

import logging

import torch

from imgclf.compute.device import autocast, to_layout
from imgclf.compute.distributed import batch_block, current, gather
from imgclf.core.errors import DataError
from imgclf.core.escape import one_line
from imgclf.core.progress import progress
from imgclf.data.feed import make_feed
from imgclf.data.fixes import apply_fixes, read_fixes
from imgclf.data.pipeline import default_workers
from imgclf.data.sources import finish_split, open_source

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
    world = world or current()
    if not world.distributed:
        return infer(model, feed.batches(), device, amp, desc=desc, channels_last=channels_last)
    block = batch_block(len(feed.batches()), world.rank, world.size)
    logits, labels = infer(model, feed.batches(block), device, amp, desc=desc, channels_last=channels_last)
    parts = [p for p in gather((logits, labels), world) if len(p[1])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def open_model_data(
    config: dict | None, data: str | None, split: str | None, data_root: str | None = None, fixes: str | None = None
):
    """(source, split) of `data`, default the data the model was trained on, opened as its training opened it
    (the same carved validation split, from the recorded fraction and seed, and the run's --apply-fixes). `split`
    None: the data's held-out split (`DataSource.held_out_split`: test where there is one, else val). `fixes`: a
    fixes.csv applied to every split before validation is carved (`source.fixes` records what it did)."""
    cfg = config or {}
    data = data or cfg.get("data")
    own = data == cfg.get("data")  # the run's own data: its split carved again as training carved it
    if not data:
        raise DataError("no --data given and the model does not record its data: pass --data")
    val_fraction, seed = cfg.get("val_fraction", 0.2), cfg.get("seed", 0)
    src = open_source(
        data, data_root=data_root or cfg.get("data_root"), val_fraction=val_fraction, seed=seed, carve=False
    )
    what = "--apply-fixes"
    if not fixes and own and cfg.get("apply_fixes"):  # the data as the model was trained on it
        fixes, what = cfg["apply_fixes"], "the model's --apply-fixes"
    applied = apply_fixes(src, read_fixes(fixes, src.classes, what=what)) if fixes else None
    group_by = cfg.get("group_by") if own else None
    finish_split(src, val_fraction=val_fraction, seed=seed, group_by=group_by, clusters=applied and applied.clusters)
    return src, src.split(split or src.held_out_split())


def align_classes(data_classes: list[str], model_classes: list[str], where: str) -> list[int]:
    """Map the data's class indices to the model's, by name."""
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise DataError(
            f"{where} has classes the model does not know ({', '.join(missing[:5])}); "
            f"the model was trained on: {', '.join(model_classes[:10])}"
        )
    return [model_classes.index(c) for c in data_classes]


def to_model_order(labels: torch.Tensor, mapping: list[int], n_classes: int) -> torch.Tensor:
    """Labels in the data's class order -> the model's: class indices (N) mapped, or multi-hot rows (N x C_data)
    moved to the model's columns (N x n_classes; a label the data lacks is 0 everywhere)."""
    if labels.ndim == 1:
        return torch.as_tensor(mapping, dtype=torch.long)[labels.long()]
    out = torch.zeros(len(labels), n_classes, dtype=torch.float32)
    if len(labels):
        out[:, mapping] = labels.float()
    return out


def split_logits(
    runner, data, split, data_root=None, *, batch_size=256, workers=None, cache="auto", world=None, fixes=None
):
    """(logits, labels in the model's class order, feed, left-out files, source) of `runner` on `split` of `data`
    (default: the data the model was trained on, opened as its training opened it; `fixes`: a fixes.csv applied).
    For a multi-label split `labels` is N x C float32 multi-hot, its columns in the model's label order."""
    src, s = open_model_data(runner.config, data, split, data_root, fixes)
    data = data or runner.config.get("data")
    workers = default_workers() if workers is None else workers
    mapping = align_classes(src.classes, runner.classes, data)
    feed, bad = make_feed(
        s, runner.preprocess, cache=cache, workers=max(1, workers), eval_batch_size=batch_size, desc=f"decode {split}"
    )
    for path, reason in bad:
        log.warning("left out %s: %s", one_line(path), one_line(reason))
    logits, labels = infer_sharded(runner, feed, world=world, desc=f"evaluate {split}")
    labels = to_model_order(labels, mapping, len(runner.classes))
    return logits, labels, feed, bad, src
