"""Preprocessing, and the per-image path (`--cache none`): a torchvision transform per image in DataLoader
workers, decoding every file every epoch, as the seed does. The default fast path is data/cache.py and
data/batches.py; both start from the same `Preprocess`."""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from imgclf.core.artifact import Preprocess
from imgclf.data.autoaugment import policy
from imgclf.data.images import array_to_uint8, center_crop, load_image, pil_to_uint8
from imgclf.data.sources import Split

log = logging.getLogger(__name__)

SMALL_MAX = 64  # up to this size, images get the small-image recipe (padded crop) instead of random resized crop


def resolve_preprocess(spec, *, img_size: int | None, pretrained: bool, own_size: int | None) -> Preprocess:
    """img_size: given, else the model's pretrained size with --pretrained, else the data's own size, else 224."""
    if img_size is None:
        img_size = spec.img_size if pretrained else (own_size or 224)
    if img_size == spec.img_size:
        resize = spec.resize
    elif img_size <= SMALL_MAX:
        resize = img_size
    else:
        resize = round(img_size / 0.875)  # the usual 224/256 ratio
    return Preprocess(
        img_size=int(img_size),
        resize=int(resize),
        mean=list(spec.mean),
        std=list(spec.std),
        interpolation=spec.interpolation,
    )


def common_size(split: Split, workers: int = 4) -> int | None:
    """The shorter side shared by every image of the split, or None when sizes differ (headers only)."""
    if split.arrays is not None:
        return int(min(split.arrays.shape[1:3]))

    def size(p):
        try:
            with Image.open(p) as im:
                return im.size
        except Exception:
            return None  # unreadable files are reported by the decode pass

    with ThreadPoolExecutor(workers) as ex:
        sizes = {s for s in ex.map(size, split.paths, chunksize=256) if s is not None}
    if len(sizes) == 1:
        w, h = sizes.pop()
        return min(w, h)
    return None


def decode_one(split: Split, i: int, resize: int, interpolation: str = "bilinear") -> torch.Tensor:
    if split.arrays is not None:
        return array_to_uint8(split.arrays[i], resize=resize, interpolation=interpolation)
    return pil_to_uint8(load_image(split.paths[i], resize=resize, interpolation=interpolation))


class ImageDataset(Dataset):
    """(transformed image, target) pairs, decoding each image when it is asked for: the target is the class index
    (a 0-d int64 tensor), or the multi-hot row (float32) of a multi-label split."""

    def __init__(self, split: Split, resize: int, transform, interpolation: str = "bilinear"):
        self.split, self.resize, self.transform, self.interpolation = split, resize, transform, interpolation
        self.targets = torch.as_tensor(split.target_array())  # class indices, or multi-hot rows (multi-label)

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        return decode_one(self.split, i, self.resize, self.interpolation)

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), self.targets[i]


def eval_transform(p: Preprocess):
    """uint8 (N x) 3 x H x W with shorter side `resize` -> normalised float (N x) 3 x img_size x img_size."""
    return v2.Compose(
        [
            functools.partial(center_crop, size=p.img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(p.mean, p.std),
        ]
    )


def augment_kind(p: Preprocess, augment: str) -> str:
    """`auto` resolved: the small-image recipe up to SMALL_MAX pixels, random resized crops above."""
    if augment == "auto":
        return "small" if p.img_size <= SMALL_MAX else "large"
    return augment


def small_crop_pad(size: int) -> int:
    """The seed's padding for small images: 1/8 of the side (4 px at 32)."""
    return max(1, size // 8)


def train_transform(
    p: Preprocess, augment: str = "auto", *, brightness: float = 0.0, contrast: float = 0.0, randaugment: str = "none"
):
    augment = augment_kind(p, augment)
    aa = policy(randaugment)  # after the crop and flip, on uint8, as the fast path's BatchTransform
    if augment == "none":
        return eval_transform(p) if aa is None else v2.Compose([v2.CenterCrop(p.img_size), aa, eval_transform(p)])
    if augment == "small":
        # the seed's recipe: pad, crop back to size, random horizontal flip
        geo = [v2.RandomCrop(p.img_size, padding=small_crop_pad(p.img_size)), v2.RandomHorizontalFlip()]
    elif augment == "shift":
        geo = [
            functools.partial(center_crop, size=p.img_size),
            v2.RandomCrop(p.img_size, padding=2, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
        ]
    elif augment == "large":
        geo = [
            v2.RandomResizedCrop(p.img_size, interpolation=v2.InterpolationMode(p.interpolation), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        raise ValueError(augment)
    if aa is not None:
        geo.append(aa)
    if brightness or contrast:
        geo.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    return v2.Compose(geo + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(p.mean, p.std)])


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def make_loader(
    ds: Dataset,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    sampler_weights: torch.Tensor | None = None,
    order=None,
) -> DataLoader:
    """sampler_weights (with shuffle): draw the epoch with replacement, item i with chance weights[i] / sum.
    order: the items in this order (a rank's share of an epoch, data/batches.py epoch_order), as drawn."""
    # A last training batch of one image breaks BatchNorm; drop it only in that case.
    drop_last = shuffle and len(ds) % batch_size == 1 and len(ds) > 1
    # a tensor is drawn up front; another sequence (a curriculum's PacedOrder) yields each index as it is read
    sampler = order.tolist() if isinstance(order, torch.Tensor) else order
    if shuffle and sampler_weights is not None:
        if len(sampler_weights) != len(ds):
            raise ValueError(f"{len(sampler_weights)} sampling weights for {len(ds)} images")
        sampler = WeightedRandomSampler(sampler_weights, len(ds), replacement=True, generator=generator)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
