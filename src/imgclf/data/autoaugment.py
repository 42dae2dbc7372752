"""RandAugment and TrivialAugmentWide (torchvision transforms v2) for the fast path's whole uint8 batches.

Given a batched tensor, a v2 policy draws ONE op and magnitude and applies it to every image of the batch. Here
each image gets its own draw: images that share an op within a batch are correlated samples, and each step's
gradient then sees fewer distinct augmentations than the batch size, which is not the augmentation the papers
(and the per-image path, `--cache none`) measure. Per image costs a Python loop over the batch of a few tensor
ops each, small beside a forward and backward pass of a model at the sizes these policies are made for
(ImageNet's 224 px). The draws come from the epoch's generator (data/rng.py), so resume repeats them.
"""

from __future__ import annotations

import logging

import torch
from torchvision.transforms import v2

from imgclf.data.rng import global_rng_from

log = logging.getLogger(__name__)

POLICIES = ("none", "randaugment", "trivialaugment")


def policy(name: str) -> v2.Transform | None:
    """The v2 transform of a `--randaugment` choice (None for none). RandAugment as torchvision's ImageNet
    reference recipe (`--auto-augment ra`: 2 ops of magnitude 9 on its scale of 31 bins), TrivialAugmentWide as
    its paper (1 op, magnitude drawn)."""
    if name == "none":
        return None
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise ValueError(f"unknown augmentation policy '{name}': choose one of {', '.join(POLICIES)}")


class BatchPolicy:
    """uint8 N x 3 x H x W -> uint8 N x 3 x H x W, one draw of the policy per image, from `gen`."""

    def __init__(self, name: str):
        self.name, self.tf = name, policy(name)
        if self.tf is None:
            raise ValueError("BatchPolicy needs a policy, not none")

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"{self.name} works on uint8 images here, not {x.dtype}")
        with global_rng_from(gen):
            return torch.stack([self.tf(img) for img in x])
