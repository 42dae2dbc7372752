"""The parts a run trains with, built from its options: the model, parameter groups, optimizer, learning-rate
schedule and the weights' moving average (EMA); and the seeds of each epoch's random draws.

Exact resume: every source of randomness in epoch E (shuffle order, augmentation, dropout, worker seeds, the
attack's random starts) is drawn from generators seeded with (seed, E, rank) at the start of that epoch, and
last.pt holds the TrainState after E. So a run resumed after epoch E repeats, bit for bit on the same machine,
what an uninterrupted run would have done.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.compute.device import to_layout
from imgclf.models.activations import lean_activations
from imgclf.models.registry import build_model
from imgclf.training.muon import MuonSGD, muon_filters
from imgclf.training.options import TrainConfig


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def rank_seed(seed: int, rank: int) -> int:
    """A seed per rank from an epoch's seed (rank 0's is the seed itself, so one process draws as before)."""
    return (seed + rank * 0x9E3779B97F4A7C15) % (2**63)


def epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[int, int]:
    """(the seed of epoch `epoch`'s order, the same on every rank; this rank's own seed of that epoch)."""
    order = epoch_seed(seed, epoch)
    return order, rank_seed(order, rank)


def make_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The model a run trains, seeded, on its device and memory layout, its ReLU6 layers lean (models/activations.py):
    pretrained weights for a new run that asks for them (a resumed run's come from its checkpoint)."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        num_classes,
        pretrained=cfg.pretrained and not cfg.resume,
        weights_file=cfg.weights_file if not cfg.resume else None,
    )
    lean_activations(model)  # ReLU6 layers keep their output, not their input, for backward: same numbers, less memory
    return to_layout(model.to(device), cfg.channels_last)


class StepSchedule:
    """warmup-linear, per optimisation step: 0.2x -> 1x over the first 23% of steps, then linearly down to 0.07x
    at the last (airbench94's schedule). `total` may be set after the first steps (by --time-budget). Its one
    attribute is saved with the scheduler's state (LambdaLR keeps a callable object's __dict__)."""

    def __init__(self, total: int):
        self.total = max(1, int(total))

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.total * 0.23))
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 + (0.07 - 1.0) * min(1.0, (step - warm) / max(1, self.total - warm))


def make_ema(model: nn.Module, decay: float, warmup: int) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and buffers (torch's AveragedModel); during the first
    `warmup` updates the decay rises linearly from 0, so the average soon forgets the random start."""

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        d = decay * min(1.0, float(n_averaged) / warmup) if warmup else decay
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BatchNorm's batch counter): the model's own value
            for a, c in zip(averaged, current):
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def param_groups(cfg: TrainConfig, model: nn.Module, spec, later: list[str]) -> list[dict]:
    """Trainable parameters (and those `later` unfrozen) in groups: the new head at --lr, the rest at --lr x
    --backbone-lr-scale; with --bias-lr-scale, BatchNorm biases at lr x scale and weight decay / scale (so their
    decay per step is unchanged), as airbench does; with --optimizer muon, the convolution filters in a group of
    their own at --muon-lr."""

    def trains(name, p):
        return p.requires_grad or any(name == f or name.startswith(f + ".") for f in later)

    norm = {
        id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    filters = muon_filters(model) if cfg.optimizer == "muon" else set()
    muon = [p for name, p in model.named_parameters() if id(p) in filters and trains(name, p)]
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if trains(name, p) and id(p) not in filters:
            head = name.startswith(spec.head + ".")
            groups.setdefault(
                (head or cfg.backbone_lr_scale == 1.0, id(p) in norm and cfg.bias_lr_scale != 1.0), []
            ).append(p)
    out = []
    for (head, bias), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        lr = cfg.lr * (1.0 if head else cfg.backbone_lr_scale) * (cfg.bias_lr_scale if bias else 1.0)
        out.append(
            {"params": params, "lr": lr, "weight_decay": cfg.weight_decay / (cfg.bias_lr_scale if bias else 1.0)}
        )
    if muon:  # --optimizer muon: the filters' own group (training/muon.py)
        out.append(
            {"params": muon, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "weight_decay": 0.0, "muon": True}
        )
    return out


def make_optimizer(cfg: TrainConfig, groups) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return MuonSGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt, total_steps: int):
    """(scheduler, the per-step schedule or None): per epoch (step, cosine) or per optimisation step
    (warmup-linear over `total_steps`, which --time-budget may set once the first steps are timed)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), None
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs)), None
    if cfg.scheduler == "warmup-linear":
        schedule = StepSchedule(total_steps)
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule), schedule
    return None, None
