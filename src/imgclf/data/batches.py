"""Whole-batch augmentation on uint8 image tensors, with normalisation folded in.

The fast path keeps a split as one uint8 tensor (N x 3 x S x S) and builds each batch with a handful of tensor
operations instead of a PIL pipeline per image: gather, (pad and) crop or resample, flip, colour, normalise.
Randomness is per sample, drawn from a torch.Generator the caller seeds, so an epoch is reproducible and a
resumed run repeats it exactly.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from imgclf.compute.distributed import shard_order
from imgclf.data.autoaugment import BatchPolicy
from imgclf.data.balance import weighted_order
from imgclf.data.images import center_crop
from imgclf.data.pipeline import small_crop_pad

log = logging.getLogger(__name__)


class BatchTransform:
    """uint8 N x 3 x S x S -> normalised float N x 3 x size x size.

    kind: "eval" (centre crop), "small" (zero-padded random crop + flip: the seed's recipe for small images),
    "shift" (reflect-padded random shift of up to 2 px + flip: airbench's translate), "large" (random resized crop, scale 0.08-1, ratio 3/4-4/3, + flip), "none" (= eval).
    brightness / contrast: maximum relative change per sample (0 = off), torchvision ColorJitter semantics.
    randaugment: none, randaugment or trivialaugment, drawn per image after the crop and flip (data/autoaugment.py).
    interpolation: the resampling of "large" (`Preprocess.interpolation`: nearest, bilinear or bicubic).
    """

    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        kind: str = "eval",
        pad: int | None = None,
        brightness: float = 0.0,
        contrast: float = 0.0,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        randaugment: str = "none",
        interpolation: str = "bilinear",
    ):
        self.size, self.kind, self.interpolation = size, ("eval" if kind == "none" else kind), interpolation
        self.policy = None if randaugment == "none" else BatchPolicy(randaugment)
        self.pad = small_crop_pad(size) if pad is None else pad
        self.brightness, self.contrast = brightness, contrast
        self.scale, self.ratio = scale, ratio
        # x/255 normalised = x * a + b, per channel: one fused multiply-add instead of three passes.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.a = 1.0 / (255.0 * std_t)
        self.b = -mean_t / std_t
        self.mean255 = mean_t * 255.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.kind == "eval":
            x = self._policy(center_crop(x, self.size), gen)
            return self._normalize(x.float())
        if self.kind == "small":
            x = random_crop(x, self.size, self.pad, gen)
        elif self.kind == "shift":
            x = random_crop(center_crop(x, self.size), self.size, SHIFT_PAD, gen, mode="reflect")
        elif self.kind == "large":
            # flipped as the per-image path's RandomHorizontalFlip does (this path did not flip before)
            x = random_flip(
                random_resized_crop(x, self.size, self.scale, self.ratio, gen, mode=self.interpolation), gen
            )
            return self._normalize(self._color(self._policy(x.clamp_(0, 255), gen), gen))
        else:
            raise ValueError(f"unknown batch transform {self.kind}")
        x = random_flip(x, gen)
        return self._normalize(self._color(self._policy(x, gen).float(), gen))

    def _policy(self, x: torch.Tensor, gen) -> torch.Tensor:
        # The policies work on uint8 (as the per-image path, whose crop gives uint8): float 0..255 from the
        # resampling crop is rounded to it and back.
        if self.policy is None:
            return x
        if x.is_floating_point():
            return self.policy(x.round().clamp_(0, 255).to(torch.uint8), gen).float()
        return self.policy(x, gen)

    def _color(self, x: torch.Tensor, gen) -> torch.Tensor:
        # x: float in 0..255. Brightness scales, contrast blends with each image's mean grey (as ColorJitter).
        n = x.shape[0]
        if self.brightness:
            f = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * self.brightness
            x = (x * f).clamp_(0, 255)
        if self.contrast:
            f = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * self.contrast
            grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(n, 1, 1, 1)
            x = ((x - grey) * f + grey).clamp_(0, 255)
        return x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.b, x, self.a)


def random_flip(x: torch.Tensor, gen) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


SHIFT_PAD = 2  # airbench94's translate: up to 2 px each way, reflect padding


def random_crop(x: torch.Tensor, size: int, pad: int, gen, mode: str = "constant") -> torch.Tensor:
    """Pad by `pad` (zeros, or mode="reflect") and take a random size x size window per sample
    (RandomCrop(size, padding=pad, padding_mode=mode))."""
    n, c, h, w = x.shape
    if mode == "constant":
        xp = F.pad(x, (pad, pad, pad, pad))
    else:  # reflect padding is not implemented for uint8: pad as float, the values stay exact
        xp = F.pad(x.float(), (pad, pad, pad, pad), mode=mode).to(x.dtype)
    top = torch.randint(0, h + 2 * pad - size + 1, (n,), generator=gen)
    left = torch.randint(0, w + 2 * pad - size + 1, (n,), generator=gen)
    rows = (top.view(n, 1) + torch.arange(size)).view(n, 1, size, 1).expand(n, c, size, w + 2 * pad)
    out = xp.gather(2, rows)  # N x C x size x W'
    cols = (left.view(n, 1) + torch.arange(size)).view(n, 1, 1, size).expand(n, c, size, size)
    return out.gather(3, cols)


def random_resized_crop(x: torch.Tensor, size: int, scale, ratio, gen, *, mode: str = "bilinear") -> torch.Tensor:
    """RandomResizedCrop for a batch: per-sample area and aspect ratio, resampled with grid_sample (`mode`:
    nearest, bilinear or bicubic; bicubic overshoots, so the caller clamps).

    Returns float 0..255. Boxes are drawn as torchvision draws them (area from `scale`, log-uniform ratio),
    in one shot; a box that does not fit is shrunk to fit instead of redrawn."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen) * (h * w)
    logr = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = logr.exp()
    cw = (area * r).sqrt().clamp(max=w)
    ch = (area / r).sqrt().clamp(max=h)
    cx = torch.rand(n, generator=gen) * (w - cw) + cw / 2
    cy = torch.rand(n, generator=gen) * (h - ch) + ch / 2
    # affine_grid works in [-1, 1] coordinates of the input (align_corners=False)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cw / w
    theta[:, 1, 1] = ch / h
    theta[:, 0, 2] = (2 * cx / w) - 1
    theta[:, 1, 2] = (2 * cy / h) - 1
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(x.float(), grid, mode=mode, padding_mode="border", align_corners=False)


def epoch_order(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    weights: torch.Tensor | None = None,
    shard: tuple[int, int] | None = None,
    paced=None,
) -> torch.Tensor:
    """One training epoch's order of `n` images: a permutation from `generator`, or with `weights` a draw with
    replacement (image i with chance weights[i] / weights.sum()), or with `paced` (training's Curriculum) the
    curriculum's draw from uniforms of `generator`. `shard` = (rank, world size): this rank's part of the order
    every rank draws alike (distributed.shard_order). The last batch is dropped only when it would hold a single
    image (BatchNorm cannot train on one)."""
    m = n if shard is None else -(-n // shard[1])
    keep = m - 1 if (m > 1 and m % batch_size == 1) else m
    if paced is not None:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return paced.draw((u if shard is None else shard_order(u, *shard))[:keep])
    if shard is None:  # one process: draws as before sharding existed, so its runs repeat bit for bit
        if weights is not None:
            return weighted_order(weights, keep, generator)
        return torch.randperm(n, generator=generator)[:keep]
    full = weighted_order(weights, n, generator) if weights is not None else torch.randperm(n, generator=generator)
    return shard_order(full, *shard)[:keep]


class Batches:
    """Iterate (images, labels) batches over an in-memory or memory-mapped uint8 tensor.

    shuffle: an epoch's order (`epoch_order`) from `generator`, with `weights` drawn with replacement
    (data/balance.py), or through `paced` (a curriculum), with `shard` this rank's part of it. The augmentation draws from `aug_generator` (default:
    `generator`; under torchrun one seeded per rank, while the order's is the same on every rank).
    block (without shuffle): only these batches of the in-order sequence (a rank's share of an evaluation).
    start (shuffled): the epoch from its batch `start` on (a run resumed inside it), `restore()` called once the
    epoch's order is drawn, before the first batch (it puts the generators back where the stopped epoch left them)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        transform: BatchTransform,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
        shard: tuple[int, int] | None = None,
        aug_generator: torch.Generator | None = None,
        block: range | None = None,
        paced=None,
        start: int = 0,
        restore=None,
    ):
        if weights is not None and len(weights) != len(labels):
            raise ValueError(f"{len(weights)} sampling weights for {len(labels)} images")
        self.images, self.labels = images, labels
        self.batch_size, self.transform = batch_size, transform
        self.shuffle, self.generator, self.weights, self.shard = shuffle, generator, weights, shard
        self.paced = paced
        self.aug_generator = aug_generator if aug_generator is not None else generator
        n = len(labels)
        if shuffle:
            m = n if shard is None else -(-n // shard[1])
            self.n = m - 1 if (m > 1 and m % batch_size == 1) else m
        else:
            self.n = n
        all_batches = range((self.n + batch_size - 1) // batch_size)
        self.block = all_batches if block is None or shuffle else all_batches[block.start : block.stop]
        self.start, self.restore = start, restore

    def __len__(self) -> int:
        return len(self.block) - self.start

    def __iter__(self):
        if self.shuffle:
            order = epoch_order(len(self.labels), self.batch_size, self.generator, self.weights, self.shard, self.paced)
        else:
            order = torch.arange(self.n)
        if self.restore is not None:
            self.restore()
        for b in self.block[self.start :]:
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            # in order: a contiguous slice (no gather copy); shuffled: one gather of the batch's rows
            x = self.images[int(idx[0]) : int(idx[-1]) + 1] if not self.shuffle else self.images[idx]
            yield self.transform(x, self.aug_generator), self.labels[idx]
