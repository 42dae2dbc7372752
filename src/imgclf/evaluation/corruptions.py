"""Common corruptions at severities 1-5, after Hendrycks and Dietterich's CIFAR-10-C.

D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019; the parameters below are those of their CIFAR-10-C generator,
https://github.com/hendrycks/robustness, `ImageNet-C/create_c/make_cifar_c.py` (made for 32 px images).

Every function takes a batch of uint8 images (N x 3 x H x W, the model's input size, on the CPU) and returns
uint8 of the same shape: the corrupted image is stored as 8-bit pixels, as CIFAR-10-C is, and then normalised
the way the model's preprocessing says. The random corruptions draw from one torch.Generator per image, seeded
from (seed, corruption, severity, the image's index), so a number never depends on the batch size, on --limit or
on which other corruptions ran.

Larger images get the same parameters (a blur sigma in pixels, a noise sigma in [0, 1] units, a JPEG quality,
a brightness shift, a contrast factor, and pixelate's fraction of the side): the corruption is then milder than
ImageNet-C's, which uses stronger parameters for 224 px images (see docs/robustness.md).
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)

# skimage.filters.gaussian (their blur) passes truncate=4.0 to scipy.ndimage: the kernel reaches
# int(4 * sigma + 0.5) pixels either side of its centre.
BLUR_TRUNCATE = 4.0


@dataclass(frozen=True)
class Corruption:
    name: str
    params: tuple  # the parameter at severities 1..5 (make_cifar_c.py's `c`)
    what: str  # the parameter, in words and units, for the JSON and the docs
    apply: Callable  # (uint8 N x 3 x H x W, param, [torch.Generator per image]) -> uint8 N x 3 x H x W
    random: bool = False  # draws noise (one generator per image)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8. make_cifar_c.py stores np.uint8(x * 255), which truncates; rounding is used
    here, so that an untouched pixel stays itself (at most one grey level from theirs)."""
    return (x.clamp(0, 1) * 255.0).round_().to(torch.uint8)


def gaussian_noise(x: torch.Tensor, sigma: float, gens) -> torch.Tensor:
    """x + N(0, sigma^2) per pixel and channel, in [0, 1] units, clipped."""
    noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
    return _to_uint8(_to_unit(x) + sigma * noise)


def shot_noise(x: torch.Tensor, photons: float, gens) -> torch.Tensor:
    """Poisson(x * photons) / photons: photon-counting noise, fewer photons = more noise."""
    rate = _to_unit(x) * photons
    return _to_uint8(torch.stack([torch.poisson(r, generator=g) for r, g in zip(rate, gens)]) / photons)


def gaussian_blur(x: torch.Tensor, sigma: float, gens=None) -> torch.Tensor:
    """A Gaussian blur of `sigma` pixels. skimage (theirs) extends the border by repeating the edge pixel
    ('nearest'); torchvision reflects it, so the edge is replicated first and torchvision's blur, whose
    reflection then only touches the padding, is cropped back: the same result as theirs."""
    r = int(BLUR_TRUNCATE * sigma + 0.5)
    padded = F.pad(_to_unit(x), (r, r, r, r), mode="replicate")
    blurred = TF.gaussian_blur(padded, kernel_size=[2 * r + 1, 2 * r + 1], sigma=[sigma, sigma])
    return _to_uint8(blurred[..., r : r + x.shape[-2], r : r + x.shape[-1]])


def brightness(x: torch.Tensor, shift: float, gens=None) -> torch.Tensor:
    """HSV value + shift, clipped to 1 (their rgb2hsv -> V + c -> hsv2rgb). Hue and saturation kept means each
    RGB pixel scales by V'/V, V = max(R, G, B), which is what is computed here; a black pixel (V = 0, S = 0)
    becomes the grey V'."""
    u = _to_unit(x)
    v = u.amax(dim=1, keepdim=True)
    v2 = (v + shift).clamp(max=1.0)
    scaled = u * (v2 / v.clamp(min=1e-12))
    return _to_uint8(torch.where(v > 0, scaled, v2.expand_as(u)))


def contrast(x: torch.Tensor, factor: float, gens=None) -> torch.Tensor:
    """(x - mean) * factor + mean, the mean per image and channel."""
    u = _to_unit(x)
    mean = u.mean(dim=(2, 3), keepdim=True)
    return _to_uint8((u - mean) * factor + mean)


def _per_image(x: torch.Tensor, fn) -> torch.Tensor:
    out = []
    for img in x:
        im = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy(), "RGB")
        out.append(torch.from_numpy(np.array(fn(im).convert("RGB"), dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def jpeg_compression(x: torch.Tensor, quality: int, gens=None) -> torch.Tensor:
    """Encoded as a JPEG of this quality by PIL (libjpeg, 4:2:0 chroma), as theirs, and decoded."""

    def jpeg(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB")

    return _per_image(x, jpeg)


def pixelate(x: torch.Tensor, fraction: float, gens=None) -> torch.Tensor:
    """Box-downsampled to int(side * fraction) pixels and box-upsampled back (PIL, as theirs)."""

    def pix(im):
        w, h = im.size
        small = im.resize((max(1, int(w * fraction)), max(1, int(h * fraction))), Image.BOX)
        return small.resize((w, h), Image.BOX)

    return _per_image(x, pix)


CORRUPTIONS = {
    c.name: c
    for c in (
        Corruption(
            "gaussian_noise",
            (0.04, 0.06, 0.08, 0.09, 0.10),
            "noise sigma, [0, 1] pixel units",
            gaussian_noise,
            random=True,
        ),
        Corruption(
            "shot_noise", (500, 250, 100, 75, 50), "photons at full brightness (Poisson)", shot_noise, random=True
        ),
        Corruption("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1.0), "blur sigma, pixels", gaussian_blur),
        Corruption("brightness", (0.05, 0.1, 0.15, 0.2, 0.3), "added to HSV value, [0, 1]", brightness),
        Corruption("contrast", (0.75, 0.5, 0.4, 0.3, 0.15), "factor on the deviation from the mean", contrast),
        Corruption("jpeg_compression", (80, 65, 58, 50, 40), "JPEG quality", jpeg_compression),
        Corruption("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65), "fraction of the side kept", pixelate),
    )
}


def image_generators(seed: int, name: str, severity: int, indices) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, corruption, severity, image index). A 32-bit hash: the
    CPU generator (mt19937) keeps only the low 32 bits of its seed."""
    head = f"{int(seed)}:{name}:{int(severity)}:"
    return [torch.Generator().manual_seed(zlib.crc32(f"{head}{int(i)}".encode())) for i in indices]


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0, indices=None) -> torch.Tensor:
    """Corruption `name` at `severity` (1-5) of a uint8 batch; `indices`: the images' positions in the whole
    set (default 0..N-1), which seed their noise."""
    c = CORRUPTIONS[name]
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"corrupt() takes uint8 N x 3 x H x W images, got {x.dtype} {tuple(x.shape)}")
    indices = range(len(x)) if indices is None else indices
    gens = image_generators(seed, name, severity, indices) if c.random else None
    return c.apply(x.cpu(), c.params[severity - 1], gens)
