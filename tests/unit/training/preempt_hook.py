"""`python -m preempt_hook train ...` (under torchrun, for tests/unit/training/test_preempt.py): `imgclf` with a
callback that, on rank 1, at optimisation step IMGCLF_TEST_DIE_AT dies (os._exit, on torchrun's first attempt
only), or at step IMGCLF_TEST_TERM_AT sends SIGTERM to its own process."""

from __future__ import annotations

import functools
import os
import signal
import sys

import imgclf.cli.run_train as run_train
from imgclf.cli.main import run
from imgclf.core.callback import Callback
from imgclf.training.api import train


class Hook(Callback):
    def __init__(self):
        self.die = int(os.environ.get("IMGCLF_TEST_DIE_AT", "0"))
        self.term = int(os.environ.get("IMGCLF_TEST_TERM_AT", "0"))

    def on_step_end(self, trainer) -> None:
        if trainer.plan.world.rank != 1:
            return
        step = trainer.state.step
        if step == self.die and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            print(f"rank 1: dying at step {step}", file=sys.stderr, flush=True)
            os._exit(1)
        if step == self.term:
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)
    run_train.train = functools.partial(train, callbacks=[Hook()])
    run()
