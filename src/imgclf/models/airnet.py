"""`airnet`: a small, fast network for training 32 px images from scratch, after Keller Jordan's airbench94
(https://github.com/KellerJordan/cifar10-airbench; "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024),
which builds on the hlb-CIFAR10 and David Page's ResNet speed-runs.

What it keeps from airbench94: a frozen 2x2 patch-whitening first layer initialised from the training data's
patch covariance, three conv-pool-BN-GELU groups (64, 256, 256 channels) whose convolutions start as
identities (dirac init), BatchNorm with frozen scale, a bias-free linear head scaled by 1/9, and flip-and-shift
test-time augmentation built into eval mode (so `predict` and exports get it too).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.core.callback import Callback
from imgclf.models.registry import ModelSpec, register
from imgclf.models.tta import flip_crop

log = logging.getLogger(__name__)


WHITENING_EPS = 5e-4  # airbench94's: directions with less variance than this are not amplified further


def adversarial_whitening_eps(eps: float, std, patch_values: int = 12) -> float:
    """The whitening regulariser for adversarial training at L-infinity radius `eps` (pixel units of the [0, 1]
    image; `std`: the per-channel normalisation): the smallest that keeps every perturbation inside the eps-ball
    within one unit (the data's standard deviation after whitening) along every direction of the layer.

    A perturbation moves a patch direction v (a unit vector of `patch_values` = 3 x 2 x 2 normalised values) by
    at most |v|_1 * eps / min(std) <= sqrt(patch_values) * eps / min(std), which the layer scales by
    1 / sqrt(variance + reg). With airbench's reg of 5e-4, CIFAR-10's least-varying directions (variance ~1e-4)
    are amplified ~40x and 8/255 reaches up to 16.7 units there: one-step (FGSM) training then fitted its own
    attack and not PGD from the first epoch (docs/adversarial_training.md)."""
    return max(WHITENING_EPS, patch_values * (eps / min(float(v) for v in std)) ** 2)


class _BN(nn.BatchNorm2d):
    def __init__(self, c: int):
        # airbench: momentum 0.6 in its convention = 0.4 in PyTorch's; tiny eps; the scale is not trained
        super().__init__(c, momentum=0.4, eps=1e-12)
        self.weight.requires_grad_(False)


class _Group(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BN(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = _BN(cout)
        for conv in (self.conv1, self.conv2):
            w = conv.weight.data
            nn.init.dirac_(w[: w.size(1)])  # identity on the first in-channels, default init elsewhere

    def forward(self, x):
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths=(64, 256, 256)):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)  # 2x2x3 patches: 12 directions, +/- each
        self.whiten.weight.requires_grad_(False)
        self.block1 = _Group(24, widths[0])
        self.block2 = _Group(widths[0], widths[1])
        self.block3 = _Group(widths[1], widths[2])
        # airbench's MaxPool2d(3) over the 3x3 map a 32 px image leaves, as a global max: the same numbers there,
        # and any larger image (64 px mosaics leave 7x7) ends in one vector instead of a shape error at the head
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.tta = True

    def logits(self, x):
        x = F.gelu(self.whiten(x))
        x = self.pool(self.block3(self.block2(self.block1(x))))
        return self.fc(x.flatten(1)) / 9.0

    def forward(self, x):
        if self.training or not self.tta:
            return self.logits(x)

        # flip-and-shift test-time augmentation (airbench's level 2): mirror, and shifts of one pixel; the same
        # views as `--tta flip-crop` for any model (tta.py), averaged here as logits, as airbench does
        return flip_crop(self.logits, x, 1)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = WHITENING_EPS) -> None:
        """Set the whitening layer from normalised training images (N x 3 x H x W, a few thousand): each patch
        direction scaled by 1 / sqrt(its variance + `eps`)."""
        c, (kh, kw) = images.shape[1], self.whiten.weight.shape[2:]
        patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c, kh, kw)
        flat = patches.reshape(len(patches), -1)
        cov = flat.T @ flat / len(flat)
        evals, evecs = torch.linalg.eigh(cov, UPLO="U")
        evals, evecs = evals.flip(0).view(-1, 1, 1, 1), evecs.T.reshape(c * kh * kw, c, kh, kw).flip(0)
        scaled = evecs / torch.sqrt(evals + eps)
        self.whiten.weight.copy_(torch.cat((scaled, -scaled)).to(self.whiten.weight))


class WhiteningFromData(Callback):
    """Before the first epoch of a run (not on resume): the whitening layer from the patch covariance of up to
    `images` plain (unaugmented) training images; under --adv-train with the regulariser that bounds what the
    attack's eps-ball can do to it (`adversarial_whitening_eps`)."""

    order = 20  # the model's own set-up: after the time budget's clock starts, before the frozen-feature cache
    state_key = "airnet_whitening"

    def __init__(self, images: int = 5000):
        self.images = images

    def on_fit_start(self, trainer) -> None:
        if trainer.state.epoch > 0 or trainer.state.step > 0:  # a resumed run (also inside its first epoch)
            return
        xs, n = [], 0
        for x, _ in trainer.data.train.batches():
            xs.append(x)
            n += len(x)
            if n >= self.images:
                break
        model, reg, plan = trainer.state.model, WHITENING_EPS, trainer.plan
        if plan.adv_eps is not None:  # --adv-train
            patch_values = model.whiten.weight[0].numel()
            reg = adversarial_whitening_eps(plan.adv_eps, trainer.data.preprocess.std, patch_values)
            trainer.info(
                "whitening regulariser %.3g for adversarial training at %s (airbench's: %g)",
                reg,
                plan.cfg.adv_eps,
                WHITENING_EPS,
            )
        model.init_from_data(torch.cat(xs)[: self.images].to(plan.device), eps=reg)


class WhiteningBiasWarmup(Callback):
    """airbench: the whitening layer's bias trains in the first `fraction` of the optimisation steps only,
    switched at epoch starts. Once switched off it stays off, also when --time-budget plans the run longer."""

    order = 20
    state_key = "airnet_whitening_bias"

    def __init__(self, fraction: float = 0.3):
        self.fraction, self.done = fraction, False

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state.get("done", False))

    def on_epoch_start(self, trainer) -> None:
        self.done = self.done or trainer.state.step / max(1, trainer.total_steps) >= self.fraction
        trainer.state.model.whiten.bias.requires_grad_(not self.done)


def training_callbacks() -> list[Callback]:
    """What an airnet needs from the training loop (its registry entry names this)."""
    return [WhiteningFromData(), WhiteningBiasWarmup()]


# --------------------------------------------------------------------------------------------- registry entries

# 2x2 whitening conv without padding (-1 px), three 2x max-pools, then a 3x3 max-pool: (s - 1) // 8 >= 3
AIRNET_MIN = 25
# AirNet.forward in eval mode: the image and two 1-px shifts (weighted 1/2, 1/4, 1/4), each mirrored
AIRNET_EVAL_VIEWS = 6


def _spec(name: str, widths: tuple[int, int, int], description: str) -> ModelSpec:
    """airnet and its narrower variant: the same stages, CIFAR statistics, TTA views and training callbacks."""
    return ModelSpec(
        name,
        lambda n: AirNet(n, widths),
        "fc",
        lambda m: [("whiten", ["whiten"])] + [(n, [n]) for n in ("block1", "block2", "block3")],
        img_size=32,
        resize=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        small=True,
        min_img_size=AIRNET_MIN,
        description=description,
        eval_views=AIRNET_EVAL_VIEWS,
        callbacks=training_callbacks,
    )


register(_spec("airnet", (64, 256, 256), "airbench94-style net for 32 px images from scratch"))
register(
    _spec("airnet_small", (64, 128, 256), "airnet with a narrower middle block (64/128/256): faster to train on a CPU")
)
