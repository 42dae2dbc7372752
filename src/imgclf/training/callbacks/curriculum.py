"""--curriculum as a callback: each epoch's batches drawn from the pool of the easiest (or hardest) images while
the pool is not yet every image (training/curriculum.py has the pacing and the difficulties)."""

from __future__ import annotations

import torch

from imgclf.core.callback import Callback
from imgclf.core.errors import DataError
from imgclf.training.curriculum import PacedOrder, pace, ranking


class Curriculum(Callback):
    """The Trainer's curriculum: holds the difficulties (saved with the run), and at each epoch's start tells the
    Trainer to draw that epoch's batches through `draw` while the pool is not yet every image."""

    order = 80
    state_key = "curriculum"

    def __init__(self, difficulty: torch.Tensor | None, mode: str, pacing: str, start: float, full: float):
        self.mode, self.pacing, self.start, self.full = mode, pacing, start, full
        self.difficulty = difficulty
        self.trainer, self.step0 = None, 0

    def state_dict(self) -> dict:
        return {"difficulty": self.difficulty}

    def load_state_dict(self, state: dict) -> None:
        self.difficulty = state["difficulty"]

    def on_fit_start(self, trainer) -> None:
        n = len(trainer.data.train.split)
        have = 0 if self.difficulty is None else len(self.difficulty)
        if have != n:
            raise DataError(f"--curriculum: {n} training images but difficulties for {have}")
        self.trainer, self.ranked = trainer, ranking(self.difficulty, self.mode)

    def on_epoch_start(self, trainer) -> None:
        self.step0 = trainer.state.step  # the epoch's first step (a run resumed inside the epoch sees it here too)
        full = float(self.fraction(torch.tensor([self.step0]))[0]) >= 1.0
        trainer.paced = None if full else self

    def fraction(self, steps: torch.Tensor) -> torch.Tensor:
        return pace(self.pacing, steps.double() / max(1, self.trainer.total_steps), self.start, self.full)

    def draw(self, u: torch.Tensor) -> PacedOrder:
        """The order of the epoch that starts now, for this rank's uniforms `u` (data/batches.py epoch_order)."""
        n, cfg = len(self.ranked), self.trainer.plan.cfg

        def pool(steps):
            return (self.fraction(steps) * n).ceil().long().clamp(1, n)

        return PacedOrder(self.ranked, u, self.step0, cfg.batch_size * cfg.accumulate, pool)
