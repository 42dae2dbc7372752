"""A run, resolved once: `resolve` turns the options into a checked, frozen `RunPlan`; `decide` completes it with
what needs the data and the model; `decide_steps` is --time-budget's decision, made during the first steps.

    plan = resolve(config, options)        options, YAML, recipe, a resumed run's own options, checks, derived
                                           defaults, device and ranks: no data read, no folder made
    data = open_run_data(plan)             (rundata.py)
    plan, model = decide(plan, data)       the model built, --freeze's layers, --lr auto, the precision, the run
                                           folder, class balance, steps, curriculum difficulties
    state = build_state(plan, data, model) (state.py)

Under torchrun every rank resolves and decides; what a rank could decide differently (the lr the range test
suggests, a measured precision, the run's folder, the steps --time-budget fits) is rank 0's, taken by the others
in `_agree`, the one place where ranks are made to agree.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from imgclf.compute import distributed
from imgclf.compute.device import resolve_device, training_precision
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.balance import choose_balance
from imgclf.data.feed import FastFeed, LoaderFeed
from imgclf.data.fixes import Applied, read_fixes
from imgclf.data.groups import check_group_by
from imgclf.data.pipeline import default_workers
from imgclf.data.sources import DataSource
from imgclf.models.checkpoint import load_checkpoint
from imgclf.models.registry import ModelSpec, freeze, get_spec
from imgclf.training.build import make_model
from imgclf.training.curriculum import read_difficulty, reference_difficulty
from imgclf.training.lr_find import find_lr
from imgclf.training.multilabel import choose_multilabel_balance, resolve_task
from imgclf.training.options import (
    TrainConfig,
    attack_values,
    check_machine,
    check_options,
    check_resumable,
    make_config,
)
from imgclf.training.preempt import auto_resume, check_position, elastic_name, wants_auto
from imgclf.training.recipes import FAST_SIDE, apply_recipe, sized_for_images
from imgclf.training.rundir import new_run_path

log = logging.getLogger(__name__)

# What a resumed run may change: its length and the machinery it runs on, never its recipe.
RESUME_OVERRIDES = (
    "epochs",
    "device",
    "workers",
    "cache",
    "log_every",
    "patience",
    "dist_timeout",
    "memory_check",
    "track",
    "tracking_uri",
)

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # a precision's autocast dtype
PRECISION_NAMES = {v: k for k, v in AUTOCAST.items()}


@dataclass(frozen=True)
class RunPlan:
    """Everything a run is before it trains: frozen (a change is a new plan: `dataclasses.replace`)."""

    cfg: TrainConfig  # every option, resolved: what config.yaml and the checkpoints hold
    spec: ModelSpec  # the model's registry entry
    device: torch.device  # this rank's
    world: distributed.World  # this process among the ranks (one process: World())
    resume: dict | None = None  # the checkpoint a resumed run continues; None for a new run
    adv_eps: float | None = None  # --adv-eps in pixel units (None: no --adv-train)
    adv_step: float | None = None  # --adv-step in pixel units (None: the attack's own)
    # decided with the data and the model (decide)
    run_path: str | None = None
    frozen: tuple[str, ...] = ()  # the layers --freeze (or --freeze-epochs, at first) froze
    precision: str = "fp32"  # fp32, bf16 or fp16: `auto` measured or ruled
    lr_search: dict | None = None  # --lr auto's range test (lr_find.json)
    balance: str = "none"  # --balance as decided (auto: from the class counts), and why
    balance_reason: str = ""
    feature_cache: bool = False  # the head trains on cached features (--freeze backbone)
    per_epoch: int = 0  # optimisation steps an epoch on this rank
    total_steps: int = 0  # optimisation steps in all (decide_steps sets them: --time-budget)
    resized_world: bool = False  # resumed on another number of ranks than it ran on
    again: bool = False  # --resume auto found no checkpoint: the run starts in its folder, which may hold a start
    difficulty: torch.Tensor | None = field(default=None, repr=False)  # --curriculum's, per training image

    @property
    def resumed(self) -> bool:
        return self.resume is not None

    @property
    def decided(self) -> bool:
        return self.run_path is not None

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the training steps (None: fp32)."""
        return AUTOCAST[self.precision]

    @property
    def budget_pending(self) -> bool:
        """--time-budget has yet to say how many steps fit (TimeBudget measures the first ones)."""
        return bool(self.cfg.time_budget) and not self.cfg.max_steps

    @property
    def fills_budget(self) -> bool:
        """--time-budget without --epochs: the run plans as many steps as fill the budget (more epochs than the
        recipe's or the default, or fewer), not only fewer (--epochs N with --time-budget: at most N epochs)."""
        return self.budget_pending and "epochs" not in self.cfg.explicit

    @property
    def robust_validation(self) -> bool:
        return self.cfg.adv_train != "none" and self.cfg.adv_val_images > 0


@dataclass(frozen=True)
class RunData:
    """A run's data, opened (rundata.open_run_data): decoded once, unreadable files left out and listed."""

    source: DataSource  # classes, splits (the readable images), location, notes
    preprocess: Preprocess
    train: FastFeed | LoaderFeed  # the train split's images: training epochs and evaluation batches
    val: FastFeed | LoaderFeed
    left_out: list[tuple[str, str, str]]  # (split, path, reason) of every file that could not be read
    fingerprint: str  # what the data is (checkpoints keep it; a resume on other data is refused)
    opened_at: float  # time.perf_counter() when opening began: the run's set-up counts from here
    fixes: Applied | None = None  # what --apply-fixes did to the data
    teacher: Any = None  # --teacher: training/distill.py's Teacher, opened and checked with the data


# ---------------------------------------------------------------------------------------------- resolve


def resolve(config=None, options: dict | None = None, *, world: distributed.World | None = None) -> RunPlan:
    """The run that `config` (a TrainConfig, a dict or None) and `options` describe, checked before any work.
    `world`: the ranks it runs on (default: torchrun's, if any; preflight passes the one --nproc starts)."""
    cfg, resume, again = configure(config, options or {})
    spec = check_options(cfg, resume, get_spec)
    cfg = resolve_task(cfg)  # auto: the data's own task (a CSV listed, nothing decoded); its options checked
    if cfg.apply_fixes:
        read_fixes(cfg.apply_fixes)  # the file and every row, before any work (a relabel's class: once data is listed)
    if cfg.group_by is not None:  # a column of the manifest, or a pattern that compiles; matched once listed
        check_group_by(cfg.group_by, cfg.data)
    cfg = derived_defaults(cfg)
    world = world or distributed.world_from_env()
    check_position(resume, world, cfg.resume)
    device = distributed.rank_device(resolve_device(cfg.device), world)
    check_machine(cfg, device, world)
    if resume is None:
        new_run_path(cfg.out, cfg.name, cfg.model, cfg.data, again=again)  # refuses a --name that is taken
    eps, step = attack_values(cfg)
    return RunPlan(
        cfg=cfg, spec=spec, device=device, world=world, resume=resume, adv_eps=eps, adv_step=step, again=again
    )


def configure(config, options: dict) -> tuple[TrainConfig, dict | None, bool]:
    """The options of this run, the checkpoint it resumes (None for a new run), and whether a new run may take
    its folder again (--resume auto, preempt.auto_resume). Only the options the caller set count as set: a
    recipe fills the others, and a resumed run takes its own for everything but RESUME_OVERRIDES."""
    if isinstance(config, TrainConfig):
        cfg = config.replace(**options) if options else config
    else:
        cfg = make_config({**(config or {}), **options})
    explicit, again, ckpt, auto = cfg.explicit, False, None, wants_auto(cfg)
    if auto:  # --resume auto, or a worker torchrun restarted: the run folder's latest checkpoint, if any
        cfg, again, ckpt = auto_resume(cfg)
    elif not cfg.resume:
        cfg = cfg.resolved(name=elastic_name(cfg))  # under torchrun --max-restarts: a name restarts find again
    if not cfg.resume:
        return apply_recipe(cfg, explicit), None, again
    ckpt = ckpt or load_checkpoint(cfg.resume)
    check_resumable(cfg.resume, ckpt)
    saved = make_config(ckpt["config"], source=cfg.resume)
    if "apply_fixes" in explicit:
        check_same_fixes(cfg.resume, cfg.apply_fixes, saved.apply_fixes)
        explicit = explicit - {"apply_fixes"}
    ignored = sorted(explicit - set(RESUME_OVERRIDES) - {"resume", "data"})
    if auto:  # the same command run again: only the options that differ from the run's own are ignored
        ignored = [k for k in ignored if getattr(cfg, k) != getattr(saved, k)]
    if ignored:
        log.warning("resuming with the run's own settings; ignoring %s", ", ".join(ignored))
    keep = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if k in explicit}
    return saved.resolved(resume=cfg.resume, **keep), ckpt, False


def check_same_fixes(resume: str, given: str | None, saved: str | None) -> None:
    """A resumed run applies the fixes it started with: --apply-fixes on resume names that file (or one with the
    same content), or it is refused in one line."""
    if not given and not saved:
        return
    if given and saved and os.path.abspath(given) == os.path.abspath(saved):
        return
    if given and saved and os.path.isfile(given) and os.path.isfile(saved) and _sha256(given) == _sha256(saved):
        return
    started = f"with --apply-fixes {saved}" if saved else "without --apply-fixes"
    raise UsageError(
        f"--apply-fixes {given or '(none)'}: '{resume}' was started {started}, and a resumed run keeps its data: "
        "resume without --apply-fixes (the run applies its own), or start a new run with the new fixes"
    )


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def derived_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the options whose default depends on others."""
    sgd = cfg.optimizer in ("sgd", "muon")  # muon: sgd's values for what is not a filter
    lr = cfg.lr if cfg.lr is not None else (0.01 if sgd else 1e-3)  # "auto": found later
    wd = cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if sgd else 0.05)
    workers = cfg.workers if cfg.workers is not None else default_workers()
    data = cfg.data
    if data and os.path.exists(data):
        data = os.path.abspath(data)  # so that evaluate and resume find it from any folder
    fixes = os.path.abspath(cfg.apply_fixes) if cfg.apply_fixes else cfg.apply_fixes
    return cfg.resolved(lr=lr, weight_decay=wd, workers=workers, data=data, apply_fixes=fixes)


# ---------------------------------------------------------------------------------------------- decide


def decide(plan: RunPlan, data: RunData, *, train: Callable | None = None) -> tuple[RunPlan, torch.nn.Module]:
    """The plan completed with what needs the data and a model, and that model: the run's, built once here
    (seeded, on its device), frozen as --freeze asks, swept by --lr auto and timed by `auto` precision; it goes on
    to build_state. `train`: how --difficulty auto trains its reference run (api.train)."""
    cfg = plan.cfg.resolved(img_size=data.preprocess.img_size)
    if not plan.resumed:  # a resumed run keeps the batch it started with
        cfg = fast_batch(cfg, data, plan.world)
    model = make_model(cfg, len(data.source.classes), plan.device)
    frozen = freeze_layers(cfg, model)
    lr_search = None
    if cfg.lr == "auto":  # every rank runs the test; rank 0's result counts
        lr_search = _agree(find_lr(cfg, plan.spec, model, data.train, plan.device), plan.world)
        if lr_search["suggestion"] is None:
            raise UsageError(
                f"--lr auto: the range test could not suggest a learning rate ({lr_search['reason']}); "
                "pass --lr with a number, or run `imgclf lr-find` to see the curve"
            )
        cfg = cfg.resolved(lr=lr_search["suggestion"])
    precision = _agree(measure_precision(plan, cfg, data, model), plan.world)  # `auto` is measured: rank 0's
    if plan.resumed:
        run_path = os.path.dirname(os.path.abspath(cfg.resume))
    else:  # rank 0 names it (the others could see its folder appear on a shared filesystem and take another)
        path = new_run_path(cfg.out, cfg.name, cfg.model, cfg.data, again=plan.again) if plan.world.main else None
        run_path = _agree(path, plan.world)
    if cfg.task == MULTILABEL:
        balance, reason = choose_multilabel_balance(cfg.balance, data.train.split.targets)
    else:
        balance, reason = choose_balance(cfg.balance, data.train.split.labels)
    plan = replace(
        plan,
        cfg=cfg,
        frozen=tuple(frozen),
        lr_search=lr_search,
        precision=precision,
        run_path=run_path,
        balance=balance,
        balance_reason=reason,
        feature_cache=uses_feature_cache(cfg, data.train),
    )
    return replace(_with_steps(plan, data), difficulty=difficulty(plan, data, train)), model


def fast_batch(cfg: TrainConfig, data: RunData, world: distributed.World) -> TrainConfig:
    """--recipe fast on images larger than its 32 px: the batch of as many pixels (recipes.sized_for_images), said
    in the log, and the training feed set to it."""
    sized = sized_for_images(cfg, data.preprocess.img_size, world.size)
    if sized is not cfg:
        data.train.batch_size = sized.batch_size
        log.info(
            "--recipe fast: batch %d and lr %.3g for %d px images (the pixels of %d images of %d px a step; "
            "--batch-size sets it)",
            sized.batch_size,
            sized.lr,
            data.preprocess.img_size,
            cfg.batch_size,
            FAST_SIDE,
        )
    return sized


def decide_steps(plan: RunPlan, total: int, *, fill: bool = False) -> RunPlan:
    """--time-budget's decision, during the first steps: the run ends after `total` steps, as rank 0 measured them
    (so every rank stops together), and config.yaml says so. `fill` (RunPlan.fills_budget): the epochs become
    those the steps take, more or fewer than before, so that a resumed run (which keeps its config) agrees."""
    total = _agree(total, plan.world)
    epochs = -(-total // max(1, plan.per_epoch)) if fill else plan.cfg.epochs
    return replace(plan, total_steps=total, cfg=plan.cfg.resolved(max_steps=total, epochs=epochs))


def _agree(value, world: distributed.World):
    """Rank 0's `value` on every rank (`value` itself in one process): the one broadcast of the set-up."""
    return distributed.broadcast(value, world)


def freeze_layers(cfg: TrainConfig, model: torch.nn.Module) -> list[str]:
    """--freeze (or --freeze-epochs' first epochs): the layers frozen in `model`, which must keep some to train."""
    frozen = freeze(model, cfg.model, "backbone" if cfg.freeze_epochs else cfg.freeze)
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--freeze {cfg.freeze} leaves nothing to train in {cfg.model}")
    return frozen


def measure_precision(plan: RunPlan, cfg: TrainConfig, data: RunData, model: torch.nn.Module) -> str:
    """This rank's choice of training precision. `auto` may time a few training steps of a copy of `model` on a
    CPU with native bf16; a resumed run keeps the precision it started with."""
    recorded = ((plan.resume or {}).get("train_state") or {}).get("precision")
    if cfg.precision == "auto" and recorded in AUTOCAST:
        return recorded
    amp = training_precision(
        cfg.precision,
        plan.device,
        model,
        key=cfg.model,
        img_size=data.preprocess.img_size,
        batch_size=cfg.batch_size,
        channels_last=cfg.channels_last,
    )
    return PRECISION_NAMES[amp]


def uses_feature_cache(cfg: TrainConfig, train_feed) -> bool:
    """--freeze backbone on the fast path: the head trains on features computed once (features.py)."""
    mixing = cfg.mixup > 0 or cfg.cutmix > 0  # mixes images, not features: the backbone runs every epoch
    return (
        cfg.adv_train == "none"  # the attack changes the images, so the backbone runs on them every step
        and cfg.freeze == "backbone"
        and cfg.feature_cache
        and not cfg.freeze_epochs
        and not mixing
        and isinstance(train_feed, FastFeed)
    )


def _with_steps(plan: RunPlan, data: RunData) -> RunPlan:
    """The steps of an epoch on this rank, and of the run: --epochs of them, or --max-steps if fewer."""
    cfg, world = plan.cfg, plan.world
    shard = (world.rank, world.size) if world.distributed else None
    batches = len(data.train.epoch(torch.Generator().manual_seed(0), shard=shard))  # this rank's
    per_epoch = -(-batches // cfg.accumulate)
    total = min(cfg.max_steps or cfg.epochs * per_epoch, cfg.epochs * per_epoch)
    saved = (plan.resume or {}).get("train_state") or {}
    resized = plan.resumed and int(saved.get("world_size", 1)) != world.size
    if resized and not cfg.max_steps:
        # resumed on another number of ranks: an epoch is another number of steps; the epochs still to run
        # take the steps they now take, and a per-step schedule is stretched or shrunk to end there
        total = int(saved["step"]) + (cfg.epochs - int(saved["epoch"])) * per_epoch
    return replace(plan, per_epoch=per_epoch, total_steps=total, resized_world=resized)


def difficulty(plan: RunPlan, data: RunData, train: Callable | None) -> torch.Tensor | None:
    """--curriculum's difficulty of each training image: from --difficulty's file, or (auto) scored by a short
    reference run that `train` trains; None without a curriculum, or on resume (the checkpoint holds them)."""
    cfg = plan.cfg
    if cfg.curriculum == "none" or plan.resumed:
        return None
    if cfg.difficulty != "auto":
        return read_difficulty(cfg.difficulty, data.train.split)
    return reference_difficulty(cfg, data.train.split, plan.run_path, train)
