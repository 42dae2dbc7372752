"""Adversarial training (`imgclf train --adv-train fgsm|nfgsm|pgd --adv-eps 8/255`) and its robust validation.

Each training batch is replaced by its attacked version before the forward pass that trains, so the model learns
on the worst images within eps (per pixel and channel, in [0, 1] pixel units, as `imgclf robustness` measures):

- fgsm: FGSM from a uniform random start, one step of 1.25 eps (Wong, Rice and Kolter, ICLR 2020, "Fast is better
  than free"): one extra forward and backward pass per batch, about 2x the cost of a normal step.
- nfgsm: N-FGSM (de Jorge et al., NeurIPS 2022): uniform noise of twice eps, one step of eps, no projection back
  onto the eps-ball; FGSM's cost, and its authors found it free of the catastrophic overfitting that FGSM from a
  random start falls into at large eps (docs/adversarial_training.md measures both on the fast recipe).
- pgd: `--adv-steps` steps of 2.5 eps / steps from a uniform random start (Madry et al., ICLR 2018): steps + 1
  passes per batch.

The attack runs on the model as it trains (train mode, the run's precision, the model itself rather than its
DistributedDataParallel wrapper: the input gradient needs no all-reduce), against the cross-entropy of the
batch's targets (mixup's soft ones too). Its random starts come from a generator seeded per epoch and rank, so
a resumed run draws the same ones.

After each epoch, a seeded subset of `--adv-val-images` validation images is attacked with PGD-10 at eps: its
accuracy is the `val_robust_acc` column (what `--monitor val_robust_acc` follows), the clean one `val_acc`.
The Trainer's side is training/callbacks/adversarial.py.
"""

from __future__ import annotations

import torch

from imgclf.compute.device import autocast
from imgclf.compute.distributed import batch_block, gather
from imgclf.evaluation.robustness import DEFAULT_STEPS, PixelModel, fgsm_rs, n_fgsm, pgd
from imgclf.training.options import TrainConfig

ROBUST_VAL_SEED = 7_368_787  # the subset and the PGD starts of the robust validation: the same every epoch


def passes_per_step(kind: str, steps: int) -> int:
    """Forward and backward passes per training batch: the attack's, plus the one that trains."""
    return 1 + {"none": 0, "fgsm": 1, "nfgsm": 1, "pgd": steps}[kind]


def robust_val_images(cfg: TrainConfig, spec) -> float:
    """--adv-train's robust validation after each epoch, in training images of the same cost: PGD-10 is 10 forward
    and backward passes and a forward (1/3) per image and view, a training step (attack included) is
    passes_per_step of them."""
    if cfg.adv_train == "none" or not cfg.adv_val_images:
        return 0.0
    return (
        cfg.adv_val_images * spec.eval_views * (DEFAULT_STEPS + 1 / 3) / passes_per_step(cfg.adv_train, cfg.adv_steps)
    )


class Perturb:
    """The training batches' attack: `perturb(x, y)` on a normalised batch returns its attacked version,
    normalised the same way."""

    def __init__(
        self, model, kind: str, eps: float, steps: int, *, step_size=None, mean, std, channels_last: bool, device, amp
    ):
        self.pixel = PixelModel(model, mean, std, channels_last=channels_last).to(device)
        self.kind, self.eps, self.steps, self.amp, self.device = kind, eps, steps, amp, device
        self.step_size = step_size  # None: each attack's own default
        self.generator: torch.Generator | None = None  # set per epoch by the Trainer

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pixels = to_pixels(self.pixel, x)
        with autocast(self.device, self.amp):
            kw = {"step_size": self.step_size, "generator": self.generator}
            if self.kind == "pgd":
                adv = pgd(self.pixel, pixels, y, self.eps, steps=self.steps, **kw)
            else:
                adv = (fgsm_rs if self.kind == "fgsm" else n_fgsm)(self.pixel, pixels, y, self.eps, **kw)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return torch.addcmul(self.pixel.b, adv * 255.0, self.pixel.a).contiguous(memory_format=layout)


def to_pixels(pixel: PixelModel, x: torch.Tensor) -> torch.Tensor:
    """A normalised batch back in [0, 1] pixel units: the inverse of PixelModel's x255 * a + b."""
    return ((x.float() - pixel.b) / (255.0 * pixel.a)).clamp_(0.0, 1.0)


def robust_subset(n: int, k: int) -> torch.Tensor:
    """The validation images the robust accuracy is measured on: k of n, seeded, sorted."""
    gen = torch.Generator().manual_seed(ROBUST_VAL_SEED)
    return torch.randperm(n, generator=gen)[: min(k, n)].sort().values


def robust_correct(model, feed, subset: torch.Tensor, eps: float, *, mean, std, channels_last, device, amp, world):
    """(correct, attacked) of PGD-10 at `eps` on the `subset` of `feed`'s evaluation images, in eval mode; under
    torchrun each rank attacks those in its block of batches and the counts are summed."""
    model.eval()
    pixel = PixelModel(model, mean, std, channels_last=channels_last).to(device)
    size = feed.eval_batch_size
    n_batches = len(feed.batches())
    block = batch_block(n_batches, world.rank, world.size) if world.distributed else range(n_batches)
    chosen = torch.zeros(len(feed), dtype=torch.bool)
    chosen[subset] = True
    correct = seen = 0
    for b, (x, y) in zip(block, feed.batches(block if world.distributed else None)):
        rows = chosen[b * size : b * size + len(y)].nonzero().flatten()
        if not len(rows):
            continue
        pixels, target = to_pixels(pixel, x[rows].to(device)), y[rows].to(device)
        gen = torch.Generator().manual_seed(ROBUST_VAL_SEED + b)  # per batch: the same for any number of ranks
        with autocast(device, amp):
            adv = pgd(pixel, pixels, target, eps, steps=DEFAULT_STEPS, generator=gen)
            with torch.no_grad():
                correct += int((pixel(adv).argmax(1) == target).sum())
        seen += len(rows)
    if world.distributed:
        parts = gather((correct, seen), world)
        correct, seen = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return correct, seen
