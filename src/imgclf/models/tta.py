"""Test-time augmentation (TTA) and temperature, for any model: one place that both the airnet model's built-in
TTA and `--tta` on evaluate, predict and export use.

Views of a normalised N x 3 x S x S batch x (deterministic: no random draw anywhere):

- flip: x and its horizontal mirror, weight 1/2 each.
- flip-crop: airbench's flip-and-shift (airnet's built-in TTA). x is padded by s pixels on every side by
  reflection and cropped back to S x S at offsets (0, 0) and (2s, 2s), i.e. the image moved s pixels
  down-right and s pixels up-left. Views: x and its mirror (weight 1/4 each) and the two shifted crops and their
  mirrors (weight 1/8 each): 6 forward passes. s = `shift_for(S)` = max(1, S // 32) pixels: 1 px at 32 px (as
  airbench), 7 px at 224 px, the same fraction of the image at every size.

`--tta` averages the *probabilities* of the views, softmax(model(view) / T) with the checkpoint's temperature T,
so TTA and calibration compose (averaged calibrated probabilities). Its output is log(mean probability): a valid
set of logits whose softmax is exactly that mean, so everything downstream (softmax, argmax, cross-entropy,
exports) works unchanged. A multi-label model (`task="multilabel"`, one sigmoid per label) averages each label's
*sigmoid* probability over the views instead, and outputs logit(mean probability) = log(mean p) - log(mean (1-p)):
logits whose sigmoid is exactly that mean. Its temperature may be one per label (a list of C floats from
`imgclf calibrate`): label k's logit is divided by T[k]. airnet's built-in TTA averages logits instead (as airbench does); an explicit `--tta`
replaces it rather than stacking on it (so `--tta none` measures airnet without it).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.core.errors import UsageError, did_you_mean
from imgclf.core.multilabel import MULTILABEL, SINGLE

log = logging.getLogger(__name__)

MODES = ("none", "flip", "flip-crop")
VIEWS = {"none": 1, "flip": 2, "flip-crop": 6}  # forward passes per image
# log() of a probability that underflowed to 0 in fp32 would be -inf; the smallest normal float32 keeps every
# output finite (log = -87.3) and changes no probability above 1e-38
_TINY = torch.finfo(torch.float32).tiny


def check_mode(mode: str | None) -> str | None:
    """`mode` lower-cased if it is one of MODES (None stays None: the model's own behaviour); else UsageError."""
    if mode is None:
        return None
    m = str(mode).strip().lower()
    if m not in MODES:
        raise UsageError(f"--tta '{mode}'{did_you_mean(m, MODES)}: use {', '.join(MODES)}")
    return m


def shift_for(img_size: int) -> int:
    """flip-crop's shift in pixels for S x S inputs: 1 px per 32 px of image, at least 1."""
    return max(1, int(img_size) // 32)


def mirror(f, x: torch.Tensor) -> torch.Tensor:
    """The mean of f over x and its horizontal mirror."""
    return 0.5 * (f(x) + f(x.flip(-1)))


def flip_crop(f, x: torch.Tensor, shift: int) -> torch.Tensor:
    """The weighted mean of f over flip-crop's six views (module docstring); with shift=1 and f = the model's
    logits, exactly airnet's built-in TTA."""
    h, w = x.shape[-2:]
    p = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    far = 2 * shift
    shifted = 0.5 * (mirror(f, p[..., 0:h, 0:w]) + mirror(f, p[..., far : h + far, far : w + far]))
    return 0.5 * mirror(f, x) + 0.5 * shifted


def average(f, x: torch.Tensor, mode: str, shift: int = 1) -> torch.Tensor:
    """The mean of f over the views of `mode` ("none": f(x))."""
    if mode == "flip":
        return mirror(f, x)
    if mode == "flip-crop":
        return flip_crop(f, x, shift)
    return f(x)


def scale(z: torch.Tensor, temperature) -> torch.Tensor:
    """z / temperature: one float for every logit, or a per-label vector (list or tensor of C) dividing column k
    by T[k]; z itself at T = 1."""
    if isinstance(temperature, (int, float)):
        return z if temperature == 1.0 else z / temperature
    return z / torch.as_tensor(temperature, dtype=z.dtype, device=z.device)[None, :]


def tta_logits(logits_fn, x: torch.Tensor, mode: str | None, shift: int = 1, temperature=1.0, task: str = SINGLE):
    """The logits of the mean over the views of the calibrated probabilities, N x C float32: for a single-label
    model log mean softmax(logits_fn(view) / T); for a multi-label one logit(mean sigmoid(logits_fn(view) / T))
    (module docstring). With no TTA (None or "none") just logits_fn(x) / T. `logits_fn` is a model or any
    Runner's `logits`; `temperature` a float or one per label."""
    if mode in (None, "none"):
        return scale(logits_fn(x), temperature)
    if task == MULTILABEL:

        def both(v):  # p and 1 - p, each from its own sigmoid: no cancellation near 0 or 1
            z = scale(logits_fn(v).float(), temperature)
            return torch.stack([z.sigmoid(), (-z).sigmoid()])

        p, q = average(both, x, mode, shift).clamp_min(_TINY).log().unbind(0)
        return p - q

    def prob(v):
        return scale(logits_fn(v).float(), temperature).softmax(-1)

    return average(prob, x, mode, shift).clamp_min(_TINY).log()


class Trusted(nn.Module):
    """`model` with its temperature and test-time augmentation: forward gives logits whose softmax is the
    (mean of the views') calibrated probability. What evaluate, predict and serve run for a checkpoint, and what
    export writes (so the division by T and the averaging are in the exported graph, no runtime code needed).

    An explicit `tta` switches off a model's built-in TTA (airnet's `tta` attribute) so the two never stack. A
    per-label temperature (a multi-label model's list) is a buffer, so exports trace it into their graph."""

    def __init__(
        self, model: nn.Module, *, temperature=1.0, tta: str | None = None, shift: int = 1, task: str = SINGLE
    ):
        super().__init__()
        self.model = model
        if isinstance(temperature, (int, float)):
            self.temperature = float(temperature)
        else:  # one per label
            self.register_buffer("temperature", torch.tensor([float(t) for t in temperature]), persistent=False)
        self.tta = tta
        self.shift = int(shift)
        self.task = task
        if tta is not None and getattr(model, "tta", None) is True:
            model.tta = False
            log.info("--tta %s replaces the model's built-in test-time augmentation", tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, x, self.tta, self.shift, self.temperature, self.task)


def wrap(
    model: nn.Module, *, temperature=1.0, tta: str | None = None, img_size: int = 32, task: str = SINGLE
) -> nn.Module:
    """`model` itself when there is nothing to add (T = 1, no --tta), else Trusted around it. `temperature`: a
    float, or a multi-label model's list of one per label. The one place a temperature is applied to a network:
    what evaluate, predict and serve run, and what exports trace."""
    if isinstance(temperature, (int, float)) and temperature == 1.0 and tta is None:
        return model
    return Trusted(model, temperature=temperature, tta=tta, shift=shift_for(img_size), task=task).eval()


def is_temperature(t) -> bool:
    """A usable temperature: a finite float > 0."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


def is_temperature_list(t, n: int | None = None) -> bool:
    """A usable per-label temperature (a multi-label model's): a non-empty list of usable temperatures, `n` of
    them where n is given."""
    return isinstance(t, (list, tuple)) and len(t) > 0 and all(is_temperature(v) for v in t) and n in (None, len(t))


def as_temperature(t):
    """A recorded temperature as what `wrap` takes: None -> 1.0, a number -> float, a list -> list of floats."""
    if t is None:
        return 1.0
    return [float(v) for v in t] if isinstance(t, (list, tuple)) else float(t)
