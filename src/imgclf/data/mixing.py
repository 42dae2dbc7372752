"""Mixup and CutMix on a whole batch: (images, labels) -> (mixed images, soft targets).

The soft targets are class probabilities (N x classes, float32) that `nn.CrossEntropyLoss` takes as they are,
label smoothing included. Multi-label targets (N x labels multi-hot, float32) are mixed the same way: each image's
targets become lam x its own + (1 - lam) x its neighbour's, a convex combination that stays in [0, 1] (a label both
hold stays 1), as `nn.BCEWithLogitsLoss` takes them (torchvision mixes 2-D targets as they are). Semantics as timm's `Mixup` in batch mode: with chance `prob` a batch is mixed at all;
when both mixup and cutmix are on, a mixed batch gets cutmix with chance `switch_prob`, else mixup; every image
is mixed with its neighbour in the (shuffled) batch, with one mixing weight for the batch drawn from
Beta(alpha, alpha); cutmix's weight is corrected to the area of the box actually pasted (the box is clipped at
the border).

The mixing itself is torchvision's `v2.MixUp`, `v2.CutMix` and `v2.RandomChoice`. They draw from torch's global
random generator, and exact resume needs every draw from the epoch's own generator `gen`: so each call runs them
on the global generator seeded from one draw of `gen`, which is put back afterwards (data/rng.py). That keeps
torchvision's tested box and label code rather than a copy of it, for one 8-byte draw per batch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from imgclf.data.rng import global_rng_from

log = logging.getLogger(__name__)


class Mixer:
    """`Mixer(num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob)(x, y, gen) -> (x, soft_targets)`.

    x: float N x C x H x W (normalised, any memory format: channels_last stays channels_last), y: int64 N, or
    N x num_classes multi-hot (multi-label). Not mixed (chance 1 - prob): x as it is and one-hot (or the multi-hot)
    targets, so the loss sees the same kind of target on every batch. The same state of `gen` gives the same
    output."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, not {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha > 0 or cutmix_alpha > 0):
            raise ValueError(
                f"mixup_alpha and cutmix_alpha must be at least 0 and one of them above 0, "
                f"not {mixup_alpha} and {cutmix_alpha}"
            )
        for name, p in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {p}")
        self.num_classes, self.prob = num_classes, prob
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob
        mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None
        if mixup and cutmix:
            self._mix = v2.RandomChoice([mixup, cutmix], p=[1.0 - switch_prob, switch_prob])
        else:
            self._mix = mixup or cutmix

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if y.dim() == 2 and y.shape[1] != self.num_classes:
            raise ValueError(f"multi-hot targets must have {self.num_classes} columns, not {y.shape[1]}")
        with global_rng_from(gen):
            if float(torch.rand(())) < self.prob:
                return self._mix(x, y.float() if y.dim() == 2 else y)
        return x, (y.float() if y.dim() == 2 else F.one_hot(y, self.num_classes).to(torch.float32))

    def __repr__(self) -> str:
        return (
            f"Mixer(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob})"
        )


def make_mixer(cfg, num_classes: int) -> Mixer | None:
    """The Mixer that a TrainConfig asks for (--mixup, --cutmix, --mix-prob, --mix-switch-prob), or None when
    both alphas are 0."""
    if not (cfg.mixup > 0 or cfg.cutmix > 0):
        return None
    return Mixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
