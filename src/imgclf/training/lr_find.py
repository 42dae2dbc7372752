"""The learning-rate range test (Leslie Smith, "Cyclical Learning Rates for Training Neural Networks", 2015;
fastai's `lr_find`): train a few steps with the learning rate rising exponentially from `start_lr` to `end_lr`,
record the loss at each, and suggest a learning rate from the curve. The model and optimizer are put back as they
were afterwards, so the test can run just before training.

The suggestion is fastai's `valley` (its default since fastai 2.4; the rule came from ESRI): the longest stretch of
the smoothed loss curve that keeps falling, and the learning rate about half way along it. It was chosen over the
older "steepest descent" point because the steepest point of a noisy curve jumps between runs, often onto a spike
at the very start, while the longest fall is a property of the whole curve. As fastai does, the loss is smoothed
with a debiased exponential moving average, the sweep stops once that is `diverge` times its best, and the first
tenth of the steps and the last 5 points are left out of the suggestion (the start is flat noise, the end the
divergence itself).
"""

from __future__ import annotations

import copy
import logging
import math
import os

import torch
from torch import nn

from imgclf.compute.device import autocast, to_layout
from imgclf.compute.distributed import world_from_env
from imgclf.core.fileio import write_json
from imgclf.evaluation.plots import plot_lr_find
from imgclf.training.build import epoch_seed, make_optimizer, param_groups
from imgclf.training.multilabel import task_loss
from imgclf.training.options import TrainConfig

log = logging.getLogger(__name__)

TAIL = 5  # points dropped at the end before suggesting, as fastai


def lr_range_test(
    model: torch.nn.Module,
    batches,
    criterion,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smooth: float = 0.05,
    diverge: float = 4.0,
    channels_last: bool = False,
) -> dict:
    """Sweep the learning rate over `steps` optimisation steps on `batches` (iterated again from the start when
    shorter); returns {"lrs", "losses" (smoothed), "raw_losses", "suggestion" (lr or None), "reason"}.

    The sweep sets the lr of the optimizer's first parameter group; every other group keeps its ratio to it (a
    bias or backbone lr scale). amp: the autocast dtype, or None for fp32 (fp16 gets a gradient scaler of its own).
    smooth: weight of each new loss in the moving average (fastai's 1 - beta = 0.02; 0.05 follows the curve more
    closely over 100 steps). Model weights and buffers, optimizer state, train/eval mode and torch's random
    state are restored afterwards."""
    _check_args(start_lr, end_lr, steps, smooth, diverge)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # dropout's draws here leave the training run's alone
            lrs, raw, smoothed, stop = _sweep(
                model,
                batches,
                criterion,
                optimizer,
                device,
                amp,
                start_lr,
                end_lr,
                steps,
                smooth,
                diverge,
                channels_last,
            )
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        model.train(was_training)
    suggestion, why = suggest(lrs, smoothed, steps)
    reason = f"{why}; {stop}"
    log.info("lr range test: %s", reason)
    return {"lrs": lrs, "losses": smoothed, "raw_losses": raw, "suggestion": suggestion, "reason": reason}


def find_lr(cfg: TrainConfig, spec, model: nn.Module, train_feed, device, **sweep) -> dict:
    """The range test for a run: on its own model (as build.make_model built it and --freeze froze it; put back as it
    was afterwards), with an optimizer of the run's parameter groups at lr 1 (group 0 at the swept lr, the others
    at their ratios to it), on the run's first training batches of epoch 0's order, in fp32."""
    few = few_images(len(train_feed.split), cfg.batch_size)
    if few and world_from_env().main:  # under torchrun (--lr auto) every rank runs the test: rank 0 says it
        log.warning("%s", few)
    probe = cfg.resolved(lr=1.0)
    optimizer = make_optimizer(probe, param_groups(probe, model, spec, []))  # frozen parameters take no step anyway
    criterion = task_loss(cfg, train_feed.labels, device)  # cross-entropy, or a multi-label run's BCE
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    result = lr_range_test(
        model, train_feed.epoch(gen), criterion, optimizer, device, None, channels_last=cfg.channels_last, **sweep
    )
    model.zero_grad(set_to_none=True)  # the run starts from the model as built, gradients included
    return result


def few_images(n: int, batch_size: int) -> str | None:
    """The warning for a range test on fewer training images than one batch, or None. Then every step of the
    sweep trains on the same images, all of them: the curve shows how fast the model memorises those few, not
    which learning rate suits the task, and the suggestion follows it (2 images gave a confident 0.0123)."""
    if n >= batch_size:
        return None
    return (
        f"the learning-rate range test sees only {n} training image{'s' * (n != 1)}, fewer than one batch of "
        f"{batch_size}: every step trains on the same images, so its suggestion is unreliable; add images, or "
        "choose --lr yourself"
    )


def _check_args(start_lr, end_lr, steps, smooth, diverge) -> None:
    if not 0 < start_lr < end_lr:
        raise ValueError(f"the sweep needs 0 < start_lr < end_lr, not {start_lr} and {end_lr}")
    if steps < 2:
        raise ValueError(f"the sweep needs at least 2 steps, not {steps}")
    if not 0 < smooth <= 1:
        raise ValueError(f"smooth must be above 0 and at most 1, not {smooth}")
    if not diverge > 1:
        raise ValueError(f"diverge must be above 1 (a multiple of the best loss), not {diverge}")


def _batches_forever(batches):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the learning-rate range test got no batches")


def _sweep(model, batches, criterion, optimizer, device, amp, start_lr, end_lr, steps, smooth, diverge, channels_last):
    """(lrs, raw losses, smoothed losses, why it stopped)."""
    base = optimizer.param_groups[0]["lr"]
    ratios = [g["lr"] / base if base else 1.0 for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=(amp == torch.float16))
    model.train()
    lrs, raw, smoothed = [], [], []
    avg, best = 0.0, math.inf
    feed = _batches_forever(batches)
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        x, y = next(feed)
        x, y = to_layout(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = criterion(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return lrs, raw, smoothed, f"stopped at step {i + 1} of {steps} (lr {lr:.3g}): the loss is {value}"
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # fastai's Recorder: exponential moving average, debiased for its zero start
        avg = (1 - smooth) * avg + smooth * value
        s = avg / (1 - (1 - smooth) ** (i + 1))
        lrs.append(lr), raw.append(value), smoothed.append(s)
        best = min(best, s)
        if s > diverge * best:
            return (
                lrs,
                raw,
                smoothed,
                (
                    f"stopped at step {i + 1} of {steps} (lr {lr:.3g}): the smoothed loss "
                    f"{s:.3g} is over {diverge:g}x its best {best:.3g}"
                ),
            )
    return lrs, raw, smoothed, f"swept all {steps} steps up to lr {lrs[-1]:.3g} without diverging"


def valley(losses: list[float]) -> tuple[int, int]:
    """(start, end) of the longest run of falling values (a longest strictly decreasing subsequence, whose
    points need not be adjacent; O(n^2) for the few hundred points of a sweep)."""
    n = len(losses)
    length = [1] * n  # the longest decreasing subsequence that ends at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
        if length[i] > length[end]:
            end = i
    return max(0, end - length[end]), end


def suggest(lrs: list[float], losses: list[float], steps: int) -> tuple[float | None, str]:
    """(suggested lr or None, why): fastai's valley on the smoothed losses, without the first tenth of the steps
    and the last TAIL points."""
    lo, hi = steps // 10, len(losses) - TAIL
    if hi - lo < 3:
        return None, (
            f"no suggestion: the sweep stopped after {len(losses)} steps, too few to find a fall in the "
            f"loss (lower start_lr or end_lr, or check the data)"
        )
    start, end = valley(losses[lo:hi])
    if end - start < 2:
        return None, "no suggestion: the loss never fell over the sweep (check the data, the model and the labels)"
    third = (end - start) / 3
    idx = lo + start + int(third) + int(third / 2)  # about half way down the fall, as fastai's valley
    return float(lrs[idx]), (
        f"suggested lr {lrs[idx]:.3g}: half way down the longest fall of the smoothed loss "
        f"(lr {lrs[lo + start]:.3g} to {lrs[lo + end]:.3g}; fastai's valley)"
    )


def write_result(result: dict, folder: str) -> None:
    """lr_find.json (the curve, the suggestion and why) and lr_find.png in `folder`."""
    write_json(
        {k: result[k] for k in ("suggestion", "reason", "lrs", "losses", "raw_losses")},
        os.path.join(folder, "lr_find.json"),
    )
    plot_lr_find(result, os.path.join(folder, "lr_find.png"))
