"""What `imgclf train` and `imgclf lr-find` run, and the torchrun machinery of every command: `--nproc N` (the
pre-checks, then the same command under torchrun) and each rank's threads. Imported only when one of them runs
(cli/commands.py): it imports torch."""

from __future__ import annotations

import os

import torch

from imgclf.cli.console import after_stop
from imgclf.cli.options import LrFindOptions, TrainOptions
from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import check_ranks, strip_nproc, world_from_env
from imgclf.compute.distributed import launch as launch_torchrun
from imgclf.compute.distributed import rank_threads as threads_per_rank
from imgclf.training.api import lr_find, preflight, train


def train_command(o: TrainOptions) -> int:
    # The run directory and the best epoch are logged by `train` (and kept in train.log): not printed again here.
    train(o.train)
    return 0


def lr_find_command(o: LrFindOptions) -> int:
    r = lr_find(o.train, start_lr=o.start_lr, end_lr=o.end_lr, steps=o.steps)
    if r["suggestion"] is not None:
        print(f"suggested lr: {r['suggestion']:.3g}")
    print(r["reason"])
    print(f"curve: {os.path.join(r['run_dir'], 'lr_find.png')} (and lr_find.json)")
    return 0 if r["suggestion"] is not None else 1


def launch(o, nproc: int, argv: list[str]) -> int:
    """`--nproc N`: the same command line, less --nproc, under torchrun; checked first, so that a mistake is one
    line here, not N ranks' lines and torchrun's report: the ranks against the cores (CPU runs), and a training
    run's options, data, model and output folder (preflight). The per-rank memory estimate goes beside
    check_ranks."""
    train_config = o.train if isinstance(o, TrainOptions) else None
    device = resolve_device(train_config.device if train_config else getattr(o, "device", "auto"))
    check_ranks(nproc, device)
    if train_config is not None:
        preflight(train_config, nproc)
    command = argv[0] if argv else ""
    return launch_torchrun(nproc, strip_nproc(argv), advice=after_stop(command, {"output": getattr(o, "output", None)}))


def rank_threads() -> None:
    """Under torchrun: each rank's threads are the cores divided among this machine's ranks (torchrun's default,
    OMP_NUM_THREADS=1, would leave most cores idle); an OMP_NUM_THREADS other than 1 is taken as the user's."""
    if os.environ.get("OMP_NUM_THREADS", "1") != "1":
        return
    torch.set_num_threads(threads_per_rank(world_from_env()))
