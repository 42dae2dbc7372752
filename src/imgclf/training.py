"""The training loop: optimizer, schedule, precision, checkpoints, exact resume, CSV and TensorBoard logs.

Exact resume: every source of randomness in epoch E (shuffle order, augmentation, dropout, worker seeds) is
drawn from generators seeded with (seed, E) at the start of that epoch, and last.pt holds the model,
optimizer and scheduler after E. So a run resumed after epoch E repeats, bit for bit on the same machine,
what an uninterrupted run would have done.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import time
from dataclasses import replace

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights, make_checkpoint, save_checkpoint
from .config import TrainConfig, check_config, check_output_folder, make_config, save_yaml
from .data.feed import FastFeed, make_feed
from .data.pipeline import common_size, default_workers, resolve_preprocess
from .data.sources import open_source, write_split_manifest
from .device import autocast, resolve_device, to_layout, training_precision
from .errors import CheckpointError, DataError, UsageError
from .evaluation import compute_metrics, infer, write_eval_plots
from .features import build_feature_feeds, head_of
from .fileio import atomic_open, remove_stale_temps, write_json
from .models.registry import (
    apply_frozen_eval,
    build_model,
    format_parameter_table,
    freeze,
    get_spec,
    parameter_table,
)
from .progress import progress

log = logging.getLogger("imgclf")

RESUME_OVERRIDES = ("epochs", "device", "workers", "cache", "log_every")
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"]


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def _run_dir(cfg: TrainConfig) -> str:
    if cfg.name:
        d = os.path.join(cfg.out, cfg.name)
        if os.path.exists(d) and os.listdir(d):
            raise UsageError(f"run directory '{d}' already exists: choose another --name, or continue it with --resume {d}/last.pt")
        return d
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(str(cfg.data))) or "data")
    base = os.path.join(cfg.out, f"{cfg.model}-{data}")
    d, n = base, 2
    while os.path.exists(d) and os.listdir(d):
        d, n = f"{base}-{n}", n + 1
    return d


def _too_small(img_size: int, spec) -> str:
    other = "" if spec.small else ", or a model for small images such as smallcnn"
    return (f"--img-size {img_size} is too small for {spec.name}, which takes at least {spec.min_img_size} px (below that "
            f"its strided and pooling layers leave no real pixels in its last feature map): pass --img-size "
            f"{spec.min_img_size} or more (smaller images are upscaled){other}")


def _check_same_data(resume: str, ckpt: dict, src, split_csv: str | None) -> None:
    """Refuse to resume on data other than the run's: its metrics, best epoch and split would mix two datasets.
    Called twice: with the class names before decoding (cheap), then with the fingerprint after (`split_csv`
    given), which is computed as saved, once unreadable files are left out."""
    changed = None
    old = list(ckpt.get("classes") or [])
    if old and old != list(src.classes):
        added, removed = sorted(set(src.classes) - set(old)), sorted(set(old) - set(src.classes))
        changed = "; ".join(p for p in (f"classes added: {', '.join(added)}" if added else "",
                                        f"classes removed: {', '.join(removed)}" if removed else "") if p) or "class order differs"
    elif split_csv is not None and ckpt.get("data_fingerprint") not in (None, src.fingerprint()):
        changed = "files were added, removed or modified"
        if os.path.exists(split_csv):
            with open(split_csv, newline="") as f:
                before = {r["path"] for r in csv.DictReader(f)}
            now = {s.describe(i) for s in src.splits.values() for i in range(len(s))}
            added, removed = len(now - before), len(before - now)
            changed = (f"{added} file{'s' * (added != 1)} added, {removed} removed" if before != now
                       else "the same files, but some of them modified")
    if changed:
        raise DataError(f"the data changed since '{resume}' was saved ({changed}): resuming would mix two validation "
                        "sets; start a new run (without --resume), or restore the original data to resume")


def _param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """Trainable parameters; with --bias-lr-scale, BatchNorm biases in a group of their own at lr x scale and
    weight decay / scale (so their decay per step is unchanged), as airbench does."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.bias_lr_scale == 1.0:
        return [{"params": params}]
    norm = {id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    biases = [p for p in params if id(p) in norm]
    others = [p for p in params if id(p) not in norm]
    groups = [{"params": others}]
    if biases:
        groups.append({"params": biases, "lr": cfg.lr * cfg.bias_lr_scale, "weight_decay": cfg.weight_decay / cfg.bias_lr_scale})
    return groups


def _optimizer(cfg: TrainConfig, groups) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class StepSchedule:
    """warmup-linear, per optimisation step: 0.2x -> 1x over the first 23% of steps, then linearly down to 0.07x
    at the last (airbench94's schedule). `total` may be set after the first steps (by --time-budget)."""

    def __init__(self, total: int):
        self.total = max(1, int(total))

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.total * 0.23))
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 + (0.07 - 1.0) * min(1.0, (step - warm) / max(1, self.total - warm))


def _scheduler(cfg: TrainConfig, opt, total_steps: int):
    """(scheduler, per_step)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), False
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs)), False
    if cfg.scheduler == "warmup-linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, StepSchedule(total_steps)), True
    return None, False


class Budget:
    """--time-budget: after a few steps, how many optimisation steps fit in the minutes left.

    The first step is not timed (warm-up). Validation after each epoch is charged too: its images, at the
    training step's cost per image divided by 3 (forward only), times the test-time views."""

    PROBE = 6

    def __init__(self, minutes: float, t0: float, batch_size: int):
        self.seconds, self.t0, self.batch_images = minutes * 60.0, t0, batch_size
        self.total, self.rate, self.t1 = None, None, None

    def observe(self, done: int, *, val_images: int, per_epoch: int, tta: bool) -> int | None:
        now = time.perf_counter()
        if done == 1:
            self.t1 = now
            return None
        if done < 1 + self.PROBE:
            return None
        self.rate = (done - 1) / (now - self.t1)  # steps per second
        left = self.seconds - (now - self.t0)
        steps = done + max(0, int(left * self.rate))
        epochs = max(1, -(-steps // per_epoch))
        # per-epoch validation: forward only (~1/3 of a training step per image), times the TTA views
        val_steps = epochs * val_images * (6 if tta else 1) / 3 / max(1, self.batch_images)
        self.total = max(done, int(steps - val_steps))
        return self.total


class Lookahead:
    """airbench's lookahead: every `every` steps the weights move into a running average whose decay rises
    from 0 to 0.95**5 as (step / total)**3, and the model continues from that average; at the end the model
    is the average. Floating-point state (weights and BatchNorm statistics) only."""

    def __init__(self, model: nn.Module, every: int = 5):
        self.every = every
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, total: int) -> None:
        if step % self.every:
            return
        self.merge(model, 0.95 ** 5 * min(1.0, step / max(1, total)) ** 3)

    @torch.no_grad()
    def merge(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, a in self.avg.items():
            a.lerp_(state[k], 1 - decay)
            state[k].copy_(a)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.avg.items()}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            self.avg[k].copy_(v)


def _write_metrics(rows: list[dict], path: str) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in METRIC_COLUMNS})


def _resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the options whose default depends on others."""
    lr = cfg.lr if cfg.lr is not None else (0.01 if cfg.optimizer == "sgd" else 1e-3)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if cfg.optimizer == "sgd" else 0.05)
    workers = cfg.workers if cfg.workers is not None else default_workers()
    data = cfg.data
    if data and os.path.exists(data):
        data = os.path.abspath(data)  # so that evaluate and resume find it from any folder
    return replace(cfg, lr=lr, weight_decay=wd, workers=workers, data=data)


def train_steps(model, batches, criterion, opt, scaler, device, amp, *, channels_last: bool = True,
                max_steps: int | None = None, desc: str = "train", log_every: int | None = None, on_step=None):
    """One pass of optimisation steps over `batches`; returns (summed loss, correct, images seen).
    `on_step()` runs after each step (per-step schedules, lookahead, the time budget); a true result ends the pass.
    The training loop and the benchmarks both call this, so a benchmark measures the code that trains."""
    loss_sum, correct, seen = 0.0, 0, 0

    def status():
        return f"loss {loss_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.4f}"

    total = len(batches) if max_steps is None else min(max_steps, len(batches))
    for step, (x, y) in enumerate(progress(batches, total=total, desc=desc, unit="batch", log_every=log_every,
                                           postfix=status)):
        if max_steps is not None and step >= max_steps:
            break
        x, y = to_layout(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)
            loss = criterion(out, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        stop = on_step() if on_step is not None else False
        n = y.size(0)
        loss_sum += float(loss.detach()) * n
        correct += int((out.argmax(1) == y).sum())
        seen += n
        if stop:
            break
    return loss_sum, correct, seen


def train(config: TrainConfig | dict | None = None, **options) -> dict:
    """Train a classifier; returns results.json's content (plus `run_dir`).

    `imgclf.train(data="digits", model="smallcnn", epochs=5)` or `imgclf.train(TrainConfig(...))`.
    """
    if isinstance(config, TrainConfig):
        cfg = replace(config, **options) if options else config
        explicit = {k for k, v in cfg.to_dict().items() if v != getattr(TrainConfig(), k)}
    else:
        cfg = make_config({**(config or {}), **options})
        explicit = set(config or {}) | set(options)

    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_checkpoint(cfg.resume)
        if "train_state" not in resume_ckpt:
            raise CheckpointError(f"'{cfg.resume}' holds no training state (best.pt does not): resume from last.pt or an epoch_N.pt")
        saved = make_config(resume_ckpt["config"], source=cfg.resume)
        # A resumed run keeps its recipe; only its length and the machinery it runs on may change.
        keep = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if k in explicit}
        ignored = sorted(explicit - set(RESUME_OVERRIDES) - {"resume", "data"})
        if ignored:
            log.warning("resuming with the run's own settings; ignoring %s", ", ".join(ignored))
        cfg = replace(saved, resume=cfg.resume, **keep)
    else:
        from .recipes import apply_recipe

        cfg = apply_recipe(cfg, explicit)
    # Every check that needs no data comes first: a bad option must not cost a decode or leave a run folder.
    check_config(cfg)
    if not cfg.data:
        raise UsageError("no data given: pass --data with a folder, a CSV, or one of cifar10, cifar100, digits")
    cfg = _resolve(cfg)
    spec = get_spec(cfg.model)
    if cfg.pretrained and spec.weights is None and not cfg.weights_file:
        raise UsageError(f"{cfg.model} has no pretrained weights; drop --pretrained to train it from scratch")
    if cfg.img_size is not None and cfg.img_size < spec.min_img_size:
        raise UsageError(_too_small(cfg.img_size, spec))
    if resume_ckpt is None:
        check_output_folder(cfg.out, "--out")
    device = resolve_device(cfg.device)

    t_setup = time.perf_counter()
    src = open_source(cfg.data, data_root=cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(src.classes) < 2:
        raise DataError(f"{src.location} has one class, '{src.classes[0]}': a classifier needs at least two; "
                        "add a folder of images for each other class beside it")
    if resume_ckpt is not None:
        _check_same_data(cfg.resume, resume_ckpt, src, None)
    own = None if (cfg.img_size or cfg.pretrained) else common_size(src.splits["train"], cfg.workers or 1)
    if own is not None and own < spec.min_img_size:
        log.info("the images are %d px, below the %d px that %s takes: they are upscaled to %d px",
                 own, spec.min_img_size, cfg.model, spec.min_img_size)
        own = spec.min_img_size
    prep = resolve_preprocess(spec, img_size=cfg.img_size, pretrained=cfg.pretrained, own_size=own)
    if resume_ckpt is not None:
        from .data.pipeline import Preprocess

        prep = Preprocess.from_dict(resume_ckpt["preprocess"])
    cfg = replace(cfg, img_size=prep.img_size)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(src.classes), pretrained=cfg.pretrained and resume_ckpt is None,
                        weights_file=cfg.weights_file if resume_ckpt is None else None)
    frozen = freeze(model, cfg.model, cfg.freeze)
    model = to_layout(model.to(device), cfg.channels_last)
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--freeze {cfg.freeze} leaves nothing to train in {cfg.model}")
    opt = _optimizer(cfg, _param_groups(cfg, model))

    start_epoch, rows, best_acc, best_epoch, resume_state = 1, [], -1.0, 0, None
    if resume_ckpt is not None:
        load_weights(model, resume_ckpt, cfg.resume)
        st = resume_state = resume_ckpt["train_state"]
        opt.load_state_dict(st["optimizer"])
        start_epoch = int(resume_ckpt["epoch"]) + 1
        rows = [dict(r) for r in st["rows"] if r["epoch"] < start_epoch]
        best_acc, best_epoch = float(st["best_acc"]), int(st["best_epoch"])
        run_dir = os.path.dirname(os.path.abspath(cfg.resume))
        if not os.path.exists(os.path.join(run_dir, "best.pt")):
            log.warning("no best.pt beside '%s': the best epoch is chosen again from the epochs still to run", cfg.resume)
            best_acc, best_epoch = -1.0, 0
        if start_epoch > cfg.epochs:
            raise UsageError(f"'{cfg.resume}' already finished epoch {start_epoch - 1} of {cfg.epochs}: pass --epochs N to train longer")
    else:
        run_dir = _run_dir(cfg)

    # Decode once; files that cannot be read are left out and listed, and the run goes on.
    left_out = []
    feeds = {}
    for name in ("train", "val"):
        feed, bad = make_feed(src.splits[name], prep, cache=cfg.cache, workers=max(1, cfg.workers), augment=cfg.augment,
                              batch_size=cfg.batch_size, eval_batch_size=max(cfg.batch_size, 256),
                              brightness=cfg.brightness, contrast=cfg.contrast, desc=f"decode {name}")
        if len(feed) == 0:
            raise UsageError(f"no readable images left in the {name} split of {cfg.data}; `imgclf check` lists the problems")
        src.splits[name], feeds[name] = feed.split, feed
        left_out += [(name, p, r) for p, r in bad]
    if resume_ckpt is not None:  # compared as saved: after the unreadable files were left out
        _check_same_data(cfg.resume, resume_ckpt, src, os.path.join(run_dir, "split.csv"))
    for note in src.notes:  # after the last refusal: a refused command prints one line
        log.info("%s", note)

    os.makedirs(run_dir, exist_ok=True)
    remove_stale_temps(run_dir)  # checkpoints half-written by a run that was killed
    file_log = logging.FileHandler(os.path.join(run_dir, "train.log"))
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_log.setLevel(logging.INFO)
    log.addHandler(file_log)
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # train.log gets the whole story even when the console is quiet
        log.setLevel(logging.INFO)
        for h in log.handlers:
            if h is not file_log and h.level == logging.NOTSET:
                h.setLevel(old_level or logging.WARNING)
    try:
        amp, scaler = _precision(cfg, device, model, prep, resume_state)
        return _train_loop(cfg, src, prep, model, frozen, opt, scaler, device, amp, feeds, left_out,
                           run_dir, start_epoch, rows, best_acc, best_epoch, time.perf_counter() - t_setup, resume_state)
    finally:
        log.removeHandler(file_log)
        file_log.close()
        log.setLevel(old_level)


def _precision(cfg: TrainConfig, device, model, prep, resume_state: dict | None):
    """The autocast dtype (None: fp32) and the gradient scaler. Once the data has passed every check, since `auto`
    may time a few training steps on a CPU with native bf16; a resumed run keeps the precision it started with."""
    recorded = (resume_state or {}).get("precision")
    if cfg.precision == "auto" and recorded in ("fp32", "bf16", "fp16"):
        amp = training_precision(recorded, device)
    else:
        amp = training_precision(cfg.precision, device, model, key=cfg.model, img_size=prep.img_size,
                                 batch_size=cfg.batch_size, channels_last=cfg.channels_last)
    log.info("precision: %s%s", precision_name(amp), " (auto)" if cfg.precision == "auto" else "")
    scaler = torch.amp.GradScaler(device.type, enabled=(amp == torch.float16))
    if resume_state is not None and resume_state.get("scaler"):
        scaler.load_state_dict(resume_state["scaler"])
    return amp, scaler


def precision_name(amp) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _train_loop(cfg, src, prep, model, frozen, opt, scaler, device, amp, feeds, left_out, run_dir,
                start_epoch, rows, best_acc, best_epoch, setup_seconds, resume_state) -> dict:
    import sklearn.metrics  # noqa: F401 - imported here so its second of import time is not billed to epoch 1
    from torch.utils.tensorboard import SummaryWriter

    log.info("run directory: %s", run_dir)
    log.info("data: %s (%d classes; train %d, val %d images), preprocessing %s", src.location, len(src.classes),
             len(src.splits["train"]), len(src.splits["val"]), prep.to_dict())
    if left_out:
        log.warning("left out %d unreadable files:", len(left_out))
        for split, p, r in left_out[:20]:
            log.warning("  %s: %s (%s)", split, p, r)
        if len(left_out) > 20:
            log.warning("  ... and %d more (all in left_out.csv)", len(left_out) - 20)
    with open(os.path.join(run_dir, "left_out.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "reason"])
        w.writerows(left_out)
    log.info("parameters (%s, freeze=%s):\n%s", cfg.model, cfg.freeze, format_parameter_table(parameter_table(model, cfg.model)))
    save_yaml(cfg.to_dict(), os.path.join(run_dir, "config.yaml"))
    if src.val_origin == "carved" and resume_state is None:  # a resumed run keeps the split it started with
        write_split_manifest(src, os.path.join(run_dir, "split.csv"))

    train_feed, val_feed = feeds["train"], feeds["val"]
    t_train = time.perf_counter()  # --time-budget counts from here: the epoch loop and what it needs first
    if start_epoch == 1 and hasattr(model, "init_from_data"):
        # data-dependent initialisation (airnet's whitening layer): from up to 5,000 plain training images
        xs, n = [], 0
        for x, _ in train_feed.batches():
            xs.append(x)
            n += len(x)
            if n >= 5000:
                break
        model.init_from_data(torch.cat(xs)[:5000].to(device))
    step_model, epoch_feed, eval_feed = model, train_feed, val_feed
    if cfg.freeze == "backbone" and cfg.feature_cache and isinstance(train_feed, FastFeed):
        # Only the head trains: its inputs are computed once, not once an epoch.
        t = time.perf_counter()
        epoch_feed, eval_feed = build_feature_feeds(model, cfg.model, train_feed, val_feed, views=cfg.feature_views,
                                                    seed=cfg.seed, device=device, amp=amp,
                                                    channels_last=cfg.channels_last, batch_size=cfg.batch_size)
        step_model = head_of(model, cfg.model)
        setup_seconds += time.perf_counter() - t
        log.info("frozen-feature cache built in %.1f s", time.perf_counter() - t)

    # The length of the run in optimisation steps; --time-budget may shorten it after the first steps.
    per_epoch = len(epoch_feed.epoch(torch.Generator().manual_seed(0)))
    total_steps = min(cfg.max_steps or cfg.epochs * per_epoch, cfg.epochs * per_epoch)
    sched, per_step = _scheduler(cfg, opt, total_steps)
    look = Lookahead(step_model) if cfg.lookahead else None
    if resume_state is not None:
        if sched is not None and resume_state.get("scheduler") is not None:
            sched.load_state_dict(resume_state["scheduler"])
            # creating the scheduler set each group's lr to its starting value: back to where the run was
            for group, lr in zip(opt.param_groups, sched.get_last_lr()):
                group["lr"] = lr
        if look is not None and resume_state.get("lookahead"):
            look.load_state_dict(resume_state["lookahead"])
    done = (start_epoch - 1) * per_epoch  # steps taken before this epoch
    budget = Budget(cfg.time_budget, t_train, cfg.batch_size) if (cfg.time_budget and not cfg.max_steps) else None

    def after_step():
        nonlocal done, total_steps, cfg
        done += 1
        if per_step:
            sched.step()
        if look is not None:
            look.update(step_model, done, total_steps)
        if budget is not None and budget.total is None:
            fixed = budget.observe(done, val_images=len(eval_feed), per_epoch=per_epoch, tta=getattr(model, "tta", False))
            if fixed is not None:
                total_steps = min(total_steps, fixed)
                cfg = replace(cfg, max_steps=total_steps)
                if per_step:
                    for fn in sched.lr_lambdas:
                        fn.total = total_steps
                log.info("time budget %.1f min: %d optimisation steps (%.2f epochs) at %.0f images/s", cfg.time_budget,
                         total_steps, total_steps / per_epoch, budget.rate * cfg.batch_size)
                save_yaml(cfg.to_dict(), os.path.join(run_dir, "config.yaml"))
        return done >= total_steps

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    fingerprint = src.fingerprint()
    writer = SummaryWriter(run_dir, purge_step=start_epoch)

    def checkpoint(epoch, metrics, with_state):
        state = None
        if with_state:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                     "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rows": rows,
                     "best_acc": best_acc, "best_epoch": best_epoch,
                     "lookahead": look.state_dict() if look is not None else None, "precision": precision_name(amp)}
        return make_checkpoint(model, model_name=cfg.model, classes=src.classes, preprocess=prep.to_dict(),
                               config=cfg.to_dict(), metrics=metrics, data_fingerprint=fingerprint, epoch=epoch,
                               train_state=state)

    epoch = start_epoch
    while epoch <= cfg.epochs and done < total_steps:
        t0 = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout and, with workers=0, augmentation
        gen = torch.Generator().manual_seed(seed)  # shuffle order and worker seeds
        lr = opt.param_groups[0]["lr"]
        model.train()
        apply_frozen_eval(model, frozen)
        if hasattr(model, "train_progress"):
            model.train_progress(done / max(1, total_steps))
        last_epoch = -(-total_steps // per_epoch)
        loss_sum, correct, seen = train_steps(step_model, epoch_feed.epoch(gen), criterion, opt, scaler, device, amp,
                                              channels_last=cfg.channels_last,
                                              desc=f"epoch {epoch}" + ("" if budget and budget.total is None else f"/{last_epoch}"),
                                              log_every=cfg.log_every, on_step=after_step)
        if look is not None and done >= total_steps:
            look.merge(step_model, 1.0)  # the final model is the lookahead average
        if sched is not None and not per_step:
            sched.step()
        logits, labels = infer(step_model, eval_feed.batches(), device, amp, desc="validate", channels_last=cfg.channels_last)
        vm = compute_metrics(logits, labels, src.classes)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": vm["loss"], "val_acc": vm["accuracy"], "val_macro_f1": vm["macro_f1"], "lr": lr,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        improved = vm["accuracy"] > best_acc
        if improved:
            best_acc, best_epoch = vm["accuracy"], epoch
        summary = {k: vm[k] for k in ("accuracy", "loss", "macro_f1", "top5_accuracy")}
        _write_metrics(rows, os.path.join(run_dir, "metrics.csv"))
        for k in METRIC_COLUMNS[1:]:
            writer.add_scalar(k, row[k], epoch)
        writer.flush()
        # last.pt is written last: a kill before it means this epoch is simply redone on resume.
        if improved:
            save_checkpoint(checkpoint(epoch, summary, False), os.path.join(run_dir, "best.pt"))
        if cfg.save_every and epoch % cfg.save_every == 0:
            save_checkpoint(checkpoint(epoch, summary, True), os.path.join(run_dir, f"epoch_{epoch}.pt"))
        save_checkpoint(checkpoint(epoch, summary, True), os.path.join(run_dir, "last.pt"))
        log.info("epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f  lr %.3g  %.1fs%s",
                 epoch, -(-total_steps // per_epoch), row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                 row["val_macro_f1"], lr, row["seconds"], "  *best*" if improved else "")
        epoch += 1
    train_seconds = time.perf_counter() - t_train
    writer.close()

    # Final figures and results from the best checkpoint, evaluated once more on validation.
    best = load_checkpoint(os.path.join(run_dir, "best.pt"))
    load_weights(model, best, os.path.join(run_dir, "best.pt"))
    # in fp32, as `imgclf evaluate` runs it: results.json's numbers are the ones a user gets back
    logits, labels = infer(step_model, eval_feed.batches(), device, None, desc="validate best", channels_last=cfg.channels_last)
    bm = compute_metrics(logits, labels, src.classes)
    from .plots import plot_curves

    plot_curves(rows, os.path.join(run_dir, "curves.png"))
    write_eval_plots(bm, logits, labels, val_feed, src.classes, run_dir, title=f"validation, best epoch {best_epoch}")
    results = {
        "best_epoch": best_epoch,
        "best": {k: bm[k] for k in ("accuracy", "loss", "macro_f1", "top5_accuracy", "num_images")},
        "epochs": len(rows),
        "total_seconds": round(sum(r["seconds"] for r in rows), 2),
        "train_seconds": round(train_seconds, 2),  # this session: from the data-dependent init to the last epoch
        "steps": done,
        "setup_seconds": round(setup_seconds, 2),
        "model": cfg.model,
        "classes": src.classes,
        "left_out": len(left_out),
        "precision": precision_name(amp),
        "data_fingerprint": fingerprint,
    }
    write_json(results, os.path.join(run_dir, "results.json"))
    log.info("best epoch %d: val_acc %.4f val_macro_f1 %.4f; weights %s", best_epoch, bm["accuracy"], bm["macro_f1"],
             os.path.join(run_dir, "best.pt"))
    return {**results, "run_dir": run_dir}
