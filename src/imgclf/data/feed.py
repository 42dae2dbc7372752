"""Feeds: one split, turned into training epochs and evaluation batches, by one of two paths.

- fast (default): the decoded-image cache (data/cache.py) and whole-batch augmentation (data/batches.py), in
  the main process: no JPEG decoding and no per-image Python after the first pass.
- per-image (`--cache none`): the seed's way, a torchvision transform per image in DataLoader workers,
  decoding every file every epoch.
Both yield normalised float batches and labels and take their randomness from the generator of the epoch.
"""

from __future__ import annotations

import logging

import torch

from imgclf.core.artifact import Preprocess
from imgclf.data.batches import Batches, BatchTransform, epoch_order
from imgclf.data.cache import decode_all, drop_unreadable, load_decoded
from imgclf.data.pipeline import ImageDataset, augment_kind, eval_transform, make_loader, train_transform
from imgclf.data.sources import Split

log = logging.getLogger(__name__)


class FastFeed:
    def __init__(
        self,
        split: Split,
        images: torch.Tensor,
        prep: Preprocess,
        *,
        augment: str,
        batch_size: int,
        eval_batch_size: int,
        brightness: float = 0.0,
        contrast: float = 0.0,
        randaugment: str = "none",
    ):
        self.split, self.images = split, images
        self.labels = torch.as_tensor(split.target_array())  # N int64 classes, or N x C float32 multi-hot targets
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        common = dict(size=prep.img_size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation)
        self.train_tf = BatchTransform(
            kind=augment_kind(prep, augment),
            brightness=brightness,
            contrast=contrast,
            randaugment=randaugment,
            **common,
        )
        self.eval_tf = BatchTransform(kind="eval", **common)

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
        """One training epoch in an order from `gen`: a permutation, or with `sampler_weights` (one per image,
        data/balance.py sample_weights) drawn with replacement, or `paced` by a curriculum
        (training/callbacks/curriculum.py). Under torchrun, `shard` = (rank, world size) takes this rank's part
        of it and `aug` (a generator seeded per rank) draws the augmentation. `start`, `restore`: the epoch from
        its batch `start` on, the generators put back by `restore()` once the order is drawn (a resumed run)."""
        return Batches(
            self.images,
            self.labels,
            batch_size=self.batch_size,
            transform=self.train_tf,
            shuffle=True,
            generator=gen,
            weights=sampler_weights,
            shard=shard,
            aug_generator=aug,
            paced=paced,
            start=start,
            restore=restore,
        )

    def batches(self, block: range | None = None, indices=None):
        """Evaluation batches in order; `block`: only these batch indices (a rank's share); `indices`: only these
        images, in this order (gathered into memory: pass a chunk at a time)."""
        if indices is not None:
            idx = torch.as_tensor(indices, dtype=torch.long)
            return Batches(self.images[idx], self.labels[idx], batch_size=self.eval_batch_size, transform=self.eval_tf)
        return Batches(self.images, self.labels, batch_size=self.eval_batch_size, transform=self.eval_tf, block=block)

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]


class LoaderFeed:
    def __init__(
        self,
        split: Split,
        prep: Preprocess,
        *,
        augment: str,
        batch_size: int,
        eval_batch_size: int,
        workers: int,
        brightness: float = 0.0,
        contrast: float = 0.0,
        randaugment: str = "none",
    ):
        self.split, self.workers = split, workers
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_ds = ImageDataset(
            split,
            prep.resize,
            train_transform(
                prep, augment_kind(prep, augment), brightness=brightness, contrast=contrast, randaugment=randaugment
            ),
            prep.interpolation,
        )
        self.eval_ds = ImageDataset(split, prep.resize, eval_transform(prep), prep.interpolation)

    def __len__(self) -> int:
        return len(self.split)

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
        """As FastFeed.epoch, through a DataLoader (WeightedRandomSampler draws as Batches does). Under torchrun the
        rank's share of the order (or a curriculum's `paced` order) is the sampler, and the workers' augmentation
        seeds come from `aug` (else `gen`). From batch `start` on, the batches before it are read and dropped (so
        that every random draw of the workers is the whole epoch's), then `restore()` is called."""
        loader = self._loader(gen, sampler_weights, shard, aug, paced)
        return loader if not (start or restore) else Resumed(loader, start, restore)

    def _loader(self, gen, sampler_weights, shard, aug, paced):
        if shard is None and paced is None:
            return make_loader(
                self.train_ds,
                batch_size=self.batch_size,
                workers=self.workers,
                shuffle=True,
                generator=gen,
                sampler_weights=sampler_weights,
            )
        order = epoch_order(len(self.split), self.batch_size, gen, sampler_weights, shard, paced)
        workers_gen = aug if aug is not None else gen
        return make_loader(
            self.train_ds, batch_size=self.batch_size, workers=self.workers, generator=workers_gen, order=order
        )

    def batches(self, block: range | None = None, indices=None):
        """Evaluation batches in order; `block`: only these batch indices (a rank's share); `indices`: only these
        images, in this order."""
        ds = self.eval_ds
        if indices is not None:
            ds = torch.utils.data.Subset(ds, [int(i) for i in indices])
        elif block is not None:
            n, b = len(ds), self.eval_batch_size
            ds = torch.utils.data.Subset(ds, range(min(n, block.start * b), min(n, block.stop * b)))
        return make_loader(ds, batch_size=self.eval_batch_size, workers=self.workers)

    def image(self, i: int) -> torch.Tensor:
        return self.eval_ds.image(i)


class Resumed:
    """A DataLoader's epoch from its batch `start` on: the batches before it are read and dropped, then
    `restore()` (if any) runs before the first batch given."""

    def __init__(self, loader, start: int, restore=None):
        self.loader, self.start, self.restore = loader, start, restore

    def __len__(self) -> int:
        return len(self.loader) - self.start

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(self.start):
            next(it)
        if self.restore is not None:
            self.restore()
        yield from it


def make_feed(
    split: Split,
    prep: Preprocess,
    *,
    cache: str,
    workers: int,
    augment: str = "auto",
    batch_size: int = 128,
    eval_batch_size: int = 256,
    brightness: float = 0.0,
    contrast: float = 0.0,
    randaugment: str = "none",
    desc: str = "",
):
    """(feed, [(path, reason)] of the files left out). cache: auto|disk|memory (fast path) or none (per image)."""
    kw = dict(
        augment=augment,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        brightness=brightness,
        contrast=contrast,
        randaugment=randaugment,
    )
    if cache == "none":
        # still decode everything once up front, so unreadable files are listed and left out before step one
        errors = decode_all(split, prep.resize, None, workers=workers, desc=desc, interpolation=prep.interpolation)
        kept, _, bad = drop_unreadable(split, errors)
        return LoaderFeed(kept, prep, workers=workers, **kw), bad
    d = load_decoded(
        split,
        prep.resize,
        cache="memory" if cache == "memory" else "disk",
        workers=workers,
        desc=desc,
        interpolation=prep.interpolation,
    )
    return FastFeed(d.split, d.images, prep, **kw), d.bad
