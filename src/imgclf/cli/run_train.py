"""What `imgclf train` and `imgclf lr-find` run, and the torchrun machinery of every command: `--nproc N` (the
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
from imgclf.cli.options import LrFindOptions, TrainOptions
from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import check_ranks, strip_nproc, world_from_env
from imgclf.compute.distributed import launch as launch_torchrun
from imgclf.compute.distributed import rank_threads as threads_per_rank
from imgclf.core.errors import UsageError
from imgclf.training.api import lr_find, preflight, train
from imgclf.training.preempt import RunFinished, StopRequest

log = logging.getLogger(__name__)


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
