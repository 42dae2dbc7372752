"""Torchvision's random transforms, driven by a generator of our own.

torchvision.transforms.v2 draws from torch's global generator; exact resume needs every draw of an epoch to come
from that epoch's torch.Generator. `global_rng_from(gen)` takes one seed from `gen`, seeds the global CPU
generator with it for the length of a `with` block, and puts the caller's global state back afterwards
(`torch.random.fork_rng`): the same state of `gen` gives the same draws, and the process sees no change. Like any
use of the global generator it is not meant to run beside another thread that draws from it.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

_SEED_HIGH = 2**63 - 1  # any int64 seed


@contextlib.contextmanager
def global_rng_from(gen: torch.Generator | None):
    """Within the block, torch's global CPU generator is seeded from one draw of `gen` (CUDA's is untouched:
    the v2 transforms draw their parameters on the CPU)."""
    seed = int(torch.randint(0, _SEED_HIGH, (), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
