"""What `imgclf train`, `imgclf tune` and `imgclf lr-find` run, and the torchrun machinery of every command: `--nproc N` (the
pre-checks, then the same command under torchrun) and each rank's threads. Imported only when one of them runs
(cli/commands.py): it imports torch."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import torch

from imgclf.cli.console import after_stop
from imgclf.cli.options import LrFindOptions, TrainOptions, TuneOptions
from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import check_ranks, strip_nproc, world_from_env
from imgclf.compute.distributed import launch as launch_torchrun
from imgclf.compute.distributed import rank_threads as threads_per_rank
from imgclf.core.errors import UsageError
from imgclf.studies.tune import Tuning, default_space, read_space, study_folder, tune
from imgclf.training.api import lr_find, preflight, train
from imgclf.training.preempt import RunFinished, StopRequest

log = logging.getLogger(__name__)

DEFAULT_TRIALS = 20  # `tune` without --trials or --budget


def train_command(o: TrainOptions) -> int:
    # The run directory and the best epoch are logged by `train` (and kept in train.log): not printed again here.
    if o.max_restarts is not None:
        raise UsageError(
            "--max-restarts restarts the ranks that --nproc starts: add --nproc N (under torchrun itself, give "
            "torchrun --max-restarts N)"
        )
    request = StopRequest()
    with sigterm_stops(request):
        train(o.train, stop=request)
    return 0


@contextlib.contextmanager
def sigterm_stops(request: StopRequest):
    """While training runs its epochs, SIGTERM (a spot machine's notice, a scheduler's stop, torchrun stopping
    its workers) asks the run to stop at the next step boundary, saved there (exit 143); before the first step
    and after the last, it stops at once as before. The handler before is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def on_sigterm(signum, frame):
        if request.armed or not callable(previous):
            request.set(signum)
        else:
            previous(signum, frame)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lr_find_command(o: LrFindOptions) -> int:
    r = lr_find(o.train, start_lr=o.start_lr, end_lr=o.end_lr, steps=o.steps)
    if r["suggestion"] is not None:
        print(f"suggested lr: {r['suggestion']:.3g}")
    print(r["reason"])
    print(f"curve: {os.path.join(r['run_dir'], 'lr_find.png')} (and lr_find.json)")
    return 0 if r["suggestion"] is not None else 1


def launch(o, nproc: int, argv: list[str]) -> int:
    """`--nproc N`: the same command line, less --nproc (and --max-restarts, passed to torchrun), under torchrun;
    checked first, so that a mistake is one line here, not N ranks' lines and torchrun's report: the ranks against
    the cores (CPU runs), and a training run's options, data, model, output folder and memory (preflight)."""
    train_config = o.train if isinstance(o, TrainOptions) else None
    device = resolve_device(train_config.device if train_config else getattr(o, "device", "auto"))
    check_ranks(nproc, device)
    restarts = 0
    if train_config is not None:
        try:
            preflight(train_config, nproc)
        except RunFinished as done:  # --resume auto on a finished run: nothing to start
            log.info("%s", done)
            return 0
        restarts = o.max_restarts or 0
    command = argv[0] if argv else ""
    advice = after_stop(command, {"output": getattr(o, "output", None)})
    return launch_torchrun(
        nproc, strip_nproc(argv, ("--nproc", "--max-restarts")), max_restarts=restarts, advice=advice
    )


def rank_threads() -> None:
    """Under torchrun: each rank's threads are the cores divided among this machine's ranks (torchrun's default,
    OMP_NUM_THREADS=1, would leave most cores idle); an OMP_NUM_THREADS other than 1 is taken as the user's."""
    if os.environ.get("OMP_NUM_THREADS", "1") != "1":
        return
    torch.set_num_threads(threads_per_rank(world_from_env()))


def tune_command(o: TuneOptions) -> int:
    base = o.train
    seconds = parse_duration(o.budget) if o.budget else None
    trials = o.trials if o.trials or seconds else DEFAULT_TRIALS
    space = read_space(o.space) if o.space else default_space(base)
    t = Tuning(base, space, study_folder(base, base.resume), trials, seconds, seed=base.seed)
    quiet_optuna()
    preflight(base.replace(resume=None, out=os.path.dirname(t.folder) or ".", name=None), 1)
    log.info("tune: study in %s; %s", t.folder, ", ".join(space))
    r = tune(t)
    best = r["best"]
    if best is None:
        log.warning("no trial completed (tune.json says why); nothing written to best.yaml")
        return 1
    log.info(
        "best: trial %d, %s %.4f; imgclf train --config %s", best["number"], r["monitor"], best["value"], best["config"]
    )
    return 0


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO with all its options, and a failed one in two warnings; `tune` says each
    trial in one line of its own. Set for this process only (a command's, not a library call's)."""
    logging.getLogger("optuna").setLevel(logging.ERROR)


def parse_duration(text: str) -> float:
    """--budget: 30m, 2h, 45s or minutes as a bare number; refused in one line otherwise."""
    units = {"s": 1, "m": 60, "h": 3600}
    unit = text[-1:].lower() if text[-1:].isalpha() else "m"
    number = text[:-1] if text[-1:].isalpha() else text
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise UsageError(f"--budget {text}: give a time such as 30m, 2h or 45s") from None
    if not value > 0:
        raise UsageError(f"--budget {text}: must be more than 0")
    return value
