"""Class balancing: the imbalance ratio, class-weighted loss, a weighted sampling of each epoch, and `auto`.

- weights: `nn.CrossEntropyLoss(weight=class_weights(...))`, sklearn's `compute_class_weight("balanced")`:
  n / (classes x count), so every class carries the same total weight and the mean weight per image is 1.
  (With probability targets, as mixup gives, PyTorch divides the weighted sum by N instead of by the summed
  weights of the batch's labels; the 'balanced' weights average 1 over the epoch, so the scale stays close.)
- sampler: each epoch drawn with replacement, image i with chance proportional to its class's weight, so every
  class is equally likely at each draw (`torch.multinomial(sample_weights(...), n, replacement=True,
  generator=gen)`: the epoch's generator, so resume repeats it). Rare images are seen several times an epoch;
  an image expected lam times an epoch is left out of it with chance exp(-lam), so each epoch misses at least a
  third (1/e) of the largest class's images, different ones each epoch.
- auto, from the train split's imbalance ratio (largest class / smallest, the number `imgclf check` reports):
  below NONE_BELOW nothing; below SAMPLER_FROM weights; from SAMPLER_FROM the sampler. See `choose_balance`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# torch and sklearn are imported by the functions that use them (both heavy): `imgclf check` imports this module
# for imbalance_ratio and starts without either.

MODES = ("none", "weights", "sampler", "auto")

# Below 1.5 the 'balanced' weights of two classes stay within 0.83x-1.25x (3:2): a change to the loss smaller than
# what a different seed does, so auto leaves the run as it is. 1.5 is also where the imbalanced-learning literature
# starts to call a data set imbalanced (the KEEL imbalanced collection of Fernandez, Garcia, Herrera et al. takes
# imbalance ratios above 1.5).
NONE_BELOW = 1.5
# From 10 (where `imgclf check` warns), oversampling: Buda, Maki & Mazurowski, "A systematic study of the class
# imbalance problem in convolutional neural networks" (2018, arXiv:1710.05381), found oversampling to full balance
# the best of the methods they compared in almost every setting on MNIST, CIFAR-10 and ImageNet subsets, without
# overfitting; and loss weights 10x or more apart make a step's gradient hang on the few rare images that happen to
# be in its batch. Between the two, the weighted loss (sklearn's and Keras' usual first remedy) keeps every image in
# every epoch once, and the epoch's content the same as without balancing.
SAMPLER_FROM = 10.0


def imbalance_ratio(labels: Iterable) -> float | None:
    """Largest class count / smallest, over the classes that occur in `labels`, rounded to 2 decimals (the
    number `imgclf check` reports); None for no labels."""
    counts = Counter(labels)
    if not counts:
        return None
    return round(max(counts.values()) / min(counts.values()), 2)


def class_weights(labels: Iterable[int], num_classes: int) -> torch.Tensor:
    """float32 [num_classes]: sklearn's compute_class_weight("balanced") over the classes that occur; a class
    with no images gets 1 (it has no images to weigh, and a label-smoothing share is left as it is)."""
    import torch  # noqa: PLC0415 - heavy: `imgclf check` goes without (see above)
    from sklearn.utils.class_weight import compute_class_weight  # noqa: PLC0415 - heavy, as torch

    y = np.asarray(list(labels), dtype=np.int64)
    if y.size == 0:
        raise ValueError("class weights need at least one label")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    present = np.unique(y)
    w = np.ones(num_classes, dtype=np.float64)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.as_tensor(w, dtype=torch.float32)


def sample_weights(labels: Iterable[int], num_classes: int) -> torch.Tensor:
    """float64 [len(labels)]: each image's class weight, for a sampler where every class is equally likely."""
    import torch  # noqa: PLC0415 - heavy: `imgclf check` goes without (see above)

    y = torch.as_tensor(list(labels), dtype=torch.long)
    return class_weights(y.tolist(), num_classes).double()[y]


def weighted_order(weights: torch.Tensor, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """n indices drawn with replacement, index i with chance weights[i] / weights.sum(), from `gen`."""
    import torch  # noqa: PLC0415 - heavy: `imgclf check` goes without (see above)

    return torch.multinomial(weights, n, replacement=True, generator=gen)


def choose_balance(mode: str, labels: Iterable, *, what: str = "class") -> tuple[str, str]:
    """("none" | "weights" | "sampler", the reason, for the log and results.json). `auto` decides from the
    imbalance ratio of `labels` (the train split's); any other mode is taken as asked. `what` the reason calls a
    label: class, or label (multi-label, training/multilabel.py)."""
    if mode not in MODES:
        raise ValueError(f"balance must be one of {', '.join(MODES)}, not '{mode}'")
    if mode != "auto":
        return mode, f"--balance {mode} as asked"
    ratio = imbalance_ratio(labels)
    plural = "classes" if what == "class" else what + "s"
    if ratio is None or ratio < NONE_BELOW:
        return "none", f"auto: {plural} close to balanced (largest/smallest {ratio} < {NONE_BELOW:g}), no balancing"
    if ratio < SAMPLER_FROM:
        return "weights", (
            f"auto: largest/smallest {what} {ratio} (from {NONE_BELOW:g} to {SAMPLER_FROM:g}): {what}-weighted loss"
        )
    return "sampler", f"auto: largest/smallest {what} {ratio} (at least {SAMPLER_FROM:g}): {what}-balanced sampler"
