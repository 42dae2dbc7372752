"""Frozen-feature cache: with `--freeze backbone` nothing before the head changes, so its outputs are computed
once per image (plus a few augmented views) and the head trains on them.

The backbone is the model itself with its head swapped for an Identity, in eval mode, exactly as the frozen
parts run in ordinary training (frozen BatchNorm and dropout stay in eval mode there too). The head stays a
module of the model, so the checkpoint is the whole model, used by predict and export as usual.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from imgclf.data.batches import Batches
from imgclf.infer.logits import infer
from imgclf.models.registry import get_spec, get_submodule_parent

log = logging.getLogger(__name__)


def _swap(model: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    parent, attr = get_submodule_parent(model, dotted)
    old = parent[int(attr)] if isinstance(parent, nn.Sequential) else getattr(parent, attr)
    if isinstance(parent, nn.Sequential):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return old


def head_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(get_spec(name).head)


@torch.no_grad()
def extract(
    model: nn.Module, name: str, batches, device, amp=None, *, channels_last: bool = True, desc: str = "features"
) -> torch.Tensor:
    """Pre-head features (N x D, float32, cpu) of every batch."""
    head_name = get_spec(name).head
    head = _swap(model, head_name, nn.Identity())
    was_training = model.training
    try:
        feats, _ = infer(model, batches, device, amp, desc=desc, channels_last=channels_last)
        return feats.flatten(1)
    finally:
        _swap(model, head_name, head)
        model.train(was_training)


def _identity(x, gen):
    return x


class FeatureFeed:
    """Training epochs and evaluation batches over cached features: views x N x D.

    Each epoch draws, per image, one of its views (view 0: the plain centre crop; the others: training
    augmentation), from the epoch's generator."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, *, batch_size: int, eval_batch_size: int):
        self.feats, self.labels = feats, labels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size

    def __len__(self) -> int:
        return len(self.labels)

    def epoch(
        self,
        gen: torch.Generator,
        sampler_weights: torch.Tensor | None = None,
        *,
        shard=None,
        aug=None,
        paced=None,
        start: int = 0,
        restore=None,
    ):
        """As FastFeed.epoch: the views are augmentation, drawn from `aug` (per rank) when it is given."""
        k, n = self.feats.shape[:2]
        view = torch.randint(0, k, (n,), generator=aug if aug is not None else gen)
        x = self.feats[view, torch.arange(n)]
        return Batches(
            x,
            self.labels,
            batch_size=self.batch_size,
            transform=_identity,
            shuffle=True,
            generator=gen,
            weights=sampler_weights,
            shard=shard,
            aug_generator=aug,
            paced=paced,
            start=start,
            restore=restore,
        )

    def batches(self, block: range | None = None):
        return Batches(self.feats[0], self.labels, batch_size=self.eval_batch_size, transform=_identity, block=block)


def build_feature_feeds(
    model, name: str, train_feed, val_feed, *, views: int, seed: int, device, amp, channels_last: bool, batch_size: int
):
    """Features of train (1 + `views` augmented views) and val (1 view), from the image feeds."""
    train_feats = torch.stack(
        [
            extract(
                model,
                name,
                batches,
                device,
                amp,
                channels_last=channels_last,
                desc=f"features view {v}" if v else "features train",
            )
            for v, batches in enumerate(train_views(train_feed, views, seed))
        ]
    )
    # val in fp32 whatever the training precision: the metrics a run reports (and its final "validate best")
    # must be the ones `imgclf evaluate` gives for the checkpoint, which runs the whole model in fp32
    val_feats = extract(
        model, name, val_feed.batches(), device, None, channels_last=channels_last, desc="features val"
    )[None]
    log.info(
        "frozen-feature cache: %d train images x %d views, %d val images, %d features each",
        train_feats.shape[1],
        train_feats.shape[0],
        val_feats.shape[1],
        train_feats.shape[2],
    )
    return (
        FeatureFeed(train_feats, train_feed.labels, batch_size=batch_size, eval_batch_size=max(batch_size, 256)),
        FeatureFeed(val_feats, val_feed.labels, batch_size=batch_size, eval_batch_size=max(batch_size, 256)),
    )


def train_views(train_feed, views: int, seed: int) -> list:
    """The train split's images as the cache sees them, each view's batches in image order: view 0 the plain
    centre crops, views 1..`views` training augmentation from a generator of their own (the same images each
    time they are asked for: the distillation teacher's logits are computed on them too)."""
    out = [train_feed.batches()]
    for v in range(views):
        out.append(_in_order(train_feed, torch.Generator().manual_seed(seed * 7919 + 104729 + v)))
    return out


def _in_order(feed, gen):
    """The feed's training augmentation, but in image order (features must line up with labels)."""
    return Batches(
        feed.images, feed.labels, batch_size=feed.eval_batch_size, transform=feed.train_tf, shuffle=False, generator=gen
    )
