"""Named presets of training options (`--recipe NAME`). Options the user sets explicitly always win.

`fast`: from-scratch training of small (32 px) images with `airnet_small`, after Keller Jordan's airbench94
(https://github.com/KellerJordan/cifar10-airbench, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024):
Nesterov SGD with momentum 0.85, a per-step warm-up then linear decay, BatchNorm biases at 64x the learning
rate, label smoothing 0.2, lookahead on the weights, flip and a reflect-padded shift of up to 2 px, the
whitening layer's bias trained only in the first 30% of steps, and flip-and-shift test-time augmentation.

airbench states its learning rate and weight decay for a summed loss and "per 1024 examples"; imgclf's loss
is a mean, so the same optimisation is lr = LR_PER_IMAGE * batch size and a constant weight decay.

Its batch of 1,024 is made for 32 px images. On larger ones (64 px mosaics, say) the same count of images is
several times the pixels a step, so an epoch takes that many times fewer steps: `sized_for_images` then gives the
batch of about the same pixels (256 images of 64 px) and its learning rate, so an epoch takes the steps it takes on
32 px images (docs/benchmarks.md, the multi-label mosaics: 1,024 of them a step learned several times slower).
"""

from __future__ import annotations

import math

from imgclf.compute.distributed import world_from_env

# airbench94: lr 11.5 and weight decay 0.0153 per 1024 examples, momentum 0.85, kilostep scale 1024 * (1 + 1 / (1 - 0.85))
_KILOSTEP = 1024 * (1 + 1 / (1 - 0.85))
LR_PER_IMAGE = 11.5 / _KILOSTEP
WEIGHT_DECAY = 0.0153 / 11.5  # per step: lr * wd = 0.0153 * batch / kilostep, as airbench

RECIPES = {
    "fast": {
        # airbench94's widths are 64/256/256 (`airnet`); on a 2-core CPU the narrower middle block trains faster
        # and, in the same minutes, reached a higher test accuracy on CIFAR-10 (docs/benchmarks.md)
        "model": "airnet_small",
        "augment": "shift",
        "epochs": 10,
        "batch_size": 1024,
        "optimizer": "sgd",
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": WEIGHT_DECAY,
        "scheduler": "warmup-linear",
        "label_smoothing": 0.2,
        "bias_lr_scale": 64.0,
        "lookahead": True,
        # CIFAR-10 has no val split: keep 1,000 training images aside to pick and report on, not 10,000
        "val_fraction": 0.02,
        "save_every": 1,
    },
}


FAST_SIDE = 32  # the image side the fast recipe's batch is made for
FAST_MIN_BATCH = 32


def sized_for_images(cfg, img_size: int, world_size: int):
    """`cfg` with the fast recipe's batch for images of `img_size` px, when larger than FAST_SIDE and the batch is
    the recipe's: the power of two of images nearest to the pixels of 1,024 images of 32 px (at least
    FAST_MIN_BATCH), and its learning rate unless --lr was given. Anything else: `cfg` as it is."""
    preset = RECIPES["fast"]["batch_size"]
    if cfg.recipe != "fast" or "batch_size" in cfg.explicit or cfg.batch_size != preset or img_size <= FAST_SIDE:
        return cfg
    exact = preset * (FAST_SIDE / img_size) ** 2
    batch = max(FAST_MIN_BATCH, 2 ** round(math.log2(exact)))
    changes = {"batch_size": batch}
    if "lr" not in cfg.explicit:
        changes["lr"] = LR_PER_IMAGE * batch * world_size
    return cfg.resolved(**changes)


def apply_recipe(cfg, explicit: set[str]):
    """`cfg` with the recipe's values for every option the user did not set."""
    if cfg.recipe == "none":
        return cfg
    preset = dict(RECIPES[cfg.recipe])
    if cfg.recipe == "fast" and "lr" not in explicit:
        # under torchrun --batch-size is per rank and the gradient is averaged over the global batch
        batch = (cfg.batch_size if "batch_size" in explicit else preset["batch_size"]) * world_from_env().size
        preset["lr"] = LR_PER_IMAGE * batch
    return cfg.resolved(**{k: v for k, v in preset.items() if k not in explicit})
