"""Training's entry points: `train` (imgclf.train, `imgclf train`), `preflight` (`--nproc`'s checks before torchrun
starts), `lr_find` (`imgclf lr-find`) and `probe_precision` (`imgclf env --probe`).

A run goes through each module once, in order:

    plan = resolve(config, options)           plan.py      options, YAML, recipe, resume, checks, defaults
    data = open_run_data(plan)                rundata.py   the source, split, decoded feeds, left-out files
    plan, model = decide(plan, data)          plan.py      the model built; --freeze, --lr auto, precision, run
                                                           folder, steps: rank 0's decisions, taken by every rank
    state = build_state(plan, data, model)    state.py     optimizer, schedule, EMA, a resumed run's state
    Trainer(plan, state, data, run_dir, callbacks).fit()   trainer.py, callbacks/, writing through rundir.py
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from imgclf.compute import distributed
from imgclf.compute.device import cpu_has_native_bf16, probe_bf16
from imgclf.core.artifact import Preprocess
from imgclf.core.callback import arrange
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL
from imgclf.models.registry import build_model, get_spec
from imgclf.training.build import make_model
from imgclf.training.callbacks.tracking import fail_tracking
from imgclf.training.distill import open_teacher
from imgclf.training.fits import check_run_memory
from imgclf.training.lr_find import find_lr, write_result
from imgclf.training.options import TrainConfig
from imgclf.training.plan import decide, freeze_layers, resolve
from imgclf.training.preempt import RunFinished, StopRequest
from imgclf.training.rundata import open_checked_source, open_run_data, preprocess_for
from imgclf.training.rundir import RunDir, new_run_path
from imgclf.training.state import build_state
from imgclf.training.trainer import Trainer

log = logging.getLogger(__name__)


def train(
    config: TrainConfig | dict | None = None, *, callbacks=(), stop: StopRequest | None = None, **options
) -> dict:
    """Train a classifier; returns results.json's content (plus `run_dir`).

    `imgclf.train(data="digits", model="smallcnn", epochs=5)` or `imgclf.train(TrainConfig(...), epochs=5)`.
    The options given (keyword arguments, TrainConfig's own, flags) are the ones a recipe does not override.

    `callbacks`: your own `imgclf.core.callback.Callback`s. At each hook every callback runs by its `order`
    (equal orders in registration order: the built-in ones, the model's own, then yours): first those that shape
    a step - the EMA 5, the time budget 10, mixing 15, adversarial training 18, the model's own (airnet's
    whitening) 20, freeze-then-unfreeze 30, lookahead 40, early stopping 50, histograms 60, the overfitting
    warning 70, the curriculum 80 -, then yours (100 unless a class sets `order`), then the frozen-feature cache
    200, checkpointing 900 and the final report 1000 (training/callbacks/__init__.py lists them).

    `stop`: a StopRequest (training/preempt.py); once it is set (`imgclf train` sets it on SIGTERM) the run stops
    at the next step boundary with last.pt saved there, and Preempted is raised. `resume="auto"`: the run folder
    OUT/NAME's latest checkpoint, a new run there when it has none, or (finished) its results.json, trained no more.
    """
    callbacks = arrange(callbacks)  # two of yours with one state key: refused before any work
    try:
        plan = resolve(config, options)
    except RunFinished as done:
        log.info("%s", done)
        return done.results
    with distributed.setup(plan.device, plan.cfg.dist_timeout):  # under torchrun: joins the process group
        data = open_run_data(plan)
        plan, model = decide(plan, data, train=train)
        state = build_state(plan, data, model)
        cfg = plan.cfg
        multilabel = cfg.task == MULTILABEL
        run_dir = RunDir(
            plan.run_path, ema=cfg.ema, robust=plan.robust_validation, write=plan.world.main, multilabel=multilabel
        )
        trainer = Trainer(
            plan, state, data, run_dir, callbacks, stop=stop
        )  # before the folder exists: a refusal leaves none
        with run_dir:
            try:
                return trainer.fit()
            except BaseException as e:
                fail_tracking(trainer.callbacks, e)  # --track: the MLflow run ends FAILED (or KILLED), not RUNNING
                raise


def preflight(config: TrainConfig, world_size: int) -> None:
    """The checks `train` makes before any work, for a run of `world_size` ranks on this machine (`--nproc` makes
    them before it starts torchrun, so a mistake is one line, not one per rank and torchrun's report): the options,
    the model, the output folder, the ranks the device allows (resolve), the data (found, listed, of two classes or
    more, its validation split carved; a built-in set such as cifar10 is downloaded here, once, rather than by every
    rank at once), and the memory of all its ranks (training/fits.py: image headers read where their size decides
    the run's; no image is decoded). RunFinished: --resume auto on a finished run, nothing to start."""
    plan = resolve(config, {}, world=distributed.World(size=world_size, local_size=world_size))
    src = open_checked_source(plan.cfg)
    prep = Preprocess.from_dict(plan.resume["preprocess"]) if plan.resumed else preprocess_for(plan, src)
    counts = (len(src.splits["train"]), len(src.splits["val"]))
    here = replace(plan, world=distributed.World())  # decided here, in this one process, for all the ranks
    if plan.cfg.teacher:  # its classes against the data's: one line here, not one per rank
        open_teacher(plan.cfg, src.classes, prep, torch.device("cpu"))
    check_run_memory(here, prep, counts, len(src.classes), ranks=world_size, starting=world_size)


def lr_find(
    config: TrainConfig | dict | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    **options,
) -> dict:
    """`imgclf lr-find`: the learning-rate range test for the run these options describe (its model, freezing,
    optimizer and batches); writes lr_find.png and lr_find.json into OUT/NAME and returns the result (with
    `suggestion`, None when the curve gives none, and `run_dir`)."""
    plan = resolve(config, options)
    if plan.resumed:
        raise UsageError("lr-find starts from the options, not a checkpoint: drop --resume")
    data = open_run_data(plan)
    cfg = plan.cfg
    model = make_model(cfg, len(data.source.classes), plan.device)
    freeze_layers(cfg, model)  # as the run would freeze it
    sweep = {"start_lr": start_lr, "end_lr": end_lr, "steps": steps}
    result = find_lr(cfg, plan.spec, model, data.train, plan.device, **sweep)
    folder = new_run_path(cfg.out, cfg.name, "lr-find-" + cfg.model, cfg.data)
    if plan.world.main:  # under torchrun every rank runs the same test; rank 0 writes it
        os.makedirs(folder, exist_ok=True)
        write_result(result, folder)
    return {**result, "run_dir": folder}


def probe_precision(name: str, img_size: int | None, batch_size: int, refresh: bool) -> dict:
    """`imgclf env --probe NAME`: the training-precision probe for a registry model, run now (or its cached result
    read), at `img_size` (default: the model's own) and `batch_size`."""
    spec = get_spec(name)
    if torch.cuda.is_available() or not cpu_has_native_bf16():
        return {"model": name, "choice": "rule (no probe needed on this machine)"}
    model = build_model(name, 10, pretrained=False)
    size = img_size or spec.img_size
    return {"model": name, **probe_bf16(model, key=name, img_size=size, batch_size=batch_size, refresh=refresh)}
