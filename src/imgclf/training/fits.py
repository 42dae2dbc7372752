"""Will the run fit in memory: a run's estimate, checked once its image size and image counts are known and before
anything is decoded or trained (rundata.open_run_data), and before torchrun starts its ranks (api.preflight).

Per rank:   weights and buffers (+ the EMA's copy) + gradients + optimizer state (SGD's momentum: 1 copy of the
            trainable weights, AdamW: 2; lookahead and DDP's gradient buckets: 1 more each)
          + activations: the larger of a training batch (`--batch-size` images at the run's size, forward and
            backward) and an evaluation batch (max(--batch-size, 256) images, inference), per image as measured on
            PyTorch's meta device for this model, frozen as the run freezes it (compute/memory.py); about half
            under bf16/fp16 autocast
          + the decoded images with `--cache memory` (every rank decodes its own copy; `disk`, the default, is a
            memory-mapped file in the page cache, which the kernel reclaims and ranks share: not counted)
          + for ranks not yet started (--nproc): the process itself (Python, PyTorch and imgclf, as this one)
times the ranks on this machine, against what is available (MemAvailable, or a cgroup's limit; on GPUs each
rank's GPU). Over: refused in one line before any work (exit 2), unless --no-memory-check; over 80%: a warning.
"""

from __future__ import annotations

import logging

import torch

from imgclf.compute import distributed, memory
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import UsageError
from imgclf.models.activations import lean_activations
from imgclf.models.registry import build_model, freeze
from imgclf.training.options import TrainConfig
from imgclf.training.recipes import sized_for_images

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # evaluation batches are max(--batch-size, this) images (rundata.open_run_data)


def per_image(cfg: TrainConfig, img_size: int, num_classes: int) -> memory.PerImage:
    """The run's model's memory per image at `img_size`, as it trains (frozen as --freeze says; with
    --freeze-epochs, as it trains after them, which is more)."""

    def build():
        model = build_model(cfg.model, num_classes, pretrained=False)
        lean_activations(model)  # as training/build.make_model does
        freeze(model, cfg.model, cfg.freeze)
        return model

    key = (cfg.model, num_classes, str(cfg.freeze))
    return memory.cached_activation_bytes(key, build, img_size, cfg.channels_last)


def estimate(
    cfg: TrainConfig,
    prep: Preprocess,
    counts: tuple[int, int],
    num_classes: int,
    *,
    ranks: int,
    starting: int,
    device: torch.device,
) -> memory.Estimate:
    """The run's memory (`counts`: training and validation images; `starting`: ranks not yet running)."""
    with torch.device("meta"):
        model = build_model(cfg.model, num_classes, pretrained=False)
    freeze(model, cfg.model, cfg.freeze)
    every, trainable = memory.tensor_bytes(model)
    copies = 1 + {"sgd": 1 if cfg.momentum > 0 else 0, "muon": 1, "adamw": 2}.get(cfg.optimizer, 2)
    copies += int(cfg.lookahead) + int(ranks > 1)
    size = prep.img_size
    act = per_image(cfg, size, num_classes)
    amp = cfg.precision in ("bf16", "fp16") or (cfg.precision == "auto" and device.type == "cuda")
    scale = 0.5 if amp else 1.0
    train_b = cfg.batch_size * act.train * scale
    eval_b = max(cfg.batch_size, EVAL_BATCH) * act.infer * scale
    parts = {
        "weights, gradients and optimizer state": every * (1 + int(cfg.ema)) + trainable * copies,
        f"activations of {cfg.batch_size} images at {size} px": int(max(train_b, eval_b)),
    }
    if cfg.cache == "memory":
        parts["decoded images"] = sum(counts) * 3 * prep.resize**2
    if starting and device.type != "cuda":
        parts["the process itself"] = memory.resident()
    return memory.Estimate("this run", parts, ranks=ranks if device.type != "cuda" else 1)


def lower_hint(cfg: TrainConfig, est: memory.Estimate, room: int, ranks: int) -> str:
    """What to change, with a --batch-size that would fit (and the --accumulate that keeps the images a step)."""
    act_key = next(k for k in est.parts if k.startswith("activations"))
    per_img = est.parts[act_key] / max(cfg.batch_size, 1)
    fixed = est.per_rank - est.parts[act_key]
    fits = (memory.WARN_AT * room / max(est.ranks, 1) - fixed) / per_img if per_img else 0
    b = 1
    while b * 2 <= min(fits, cfg.batch_size):
        b *= 2
    batch = "--batch-size"
    if fits >= 1 and b < cfg.batch_size:
        k = -(-cfg.batch_size // b) * cfg.accumulate
        batch += f" (--batch-size {b} --accumulate {k} keeps {cfg.batch_size * cfg.accumulate} images a step)"
    said = [batch, "--img-size"] + (["--nproc"] if ranks > 1 else [])
    hint = "lower " + ", ".join(said[:-1]) + " or " + said[-1]
    return hint + ("; --cache disk keeps the decoded images out of it" if cfg.cache == "memory" else "")


def check_run_memory(
    plan, prep: Preprocess, counts: tuple[int, int], num_classes: int, *, ranks: int | None = None, starting: int = 0
) -> str | None:
    """Refuse a run that will not fit (UsageError), warn when it is close (see the module's docstring). Under
    torchrun rank 0 measures and decides, and every rank refuses alike. `ranks`: the ranks on this machine
    (default: torchrun's local ranks); `starting`: how many of them are yet to start (--nproc's preflight)."""
    world = plan.world
    ranks = ranks or world.local_size
    verdict = None
    if world.main:
        try:
            verdict = _verdict(plan, prep, counts, num_classes, ranks, starting)
        except UsageError as e:
            verdict = ("refuse", str(e))
        except Exception as e:  # an estimate that cannot be made never stops a run
            log.debug("memory estimate skipped: %s", e)
    verdict = distributed.broadcast(verdict, world) if world.distributed else verdict
    if verdict and verdict[0] == "refuse":
        raise UsageError(verdict[1])
    return verdict[1] if verdict else None


def _verdict(plan, prep, counts, num_classes, ranks, starting):
    # the batch the run will take: --recipe fast's is sized to the images once their size is known (plan.decide)
    cfg = plan.cfg if plan.resumed else sized_for_images(plan.cfg, prep.img_size, plan.world.size)
    est = estimate(cfg, prep, counts, num_classes, ranks=ranks, starting=starting, device=plan.device)
    room, source = memory.available(plan.device)
    if room is None:
        return None
    said = memory.check(est, room, source, lower=lower_hint(cfg, est, room, ranks), allow=not cfg.memory_check)
    return ("said", said) if said else None
