"""What trains: --freeze-epochs (the head first, then everything) and --freeze backbone's frozen-feature cache."""

from __future__ import annotations

import time

from imgclf.core.callback import Callback
from imgclf.models.registry import apply_frozen_eval
from imgclf.training.features import build_feature_feeds, head_of


class FreezeThenUnfreeze(Callback):
    """--freeze-epochs N (fastai's `fine_tune`): the first N epochs train only the new head, the backbone
    frozen (its BatchNorm statistics too); from epoch N+1 every layer trains, the pretrained ones at
    --backbone-lr-scale times the learning rate (their optimizer group is set up from the start)."""

    order = 30
    state_key = "freeze_then_unfreeze"

    def __init__(self, epochs: int, frozen: list[str]):
        self.epochs, self.frozen = epochs, list(frozen)

    def on_epoch_start(self, trainer) -> None:
        frozen_now = trainer.state.epoch < self.epochs  # state.epoch: epochs completed before this one
        for name, p in trainer.state.model.named_parameters():
            if any(name == f or name.startswith(f + ".") for f in self.frozen):
                p.requires_grad_(not frozen_now)
        apply_frozen_eval(trainer.state.model, self.frozen if frozen_now else [])
        if trainer.state.epoch == self.epochs and self.epochs > 0:
            trainer.info("epoch %d: the backbone is unfrozen; every layer trains from here", trainer.state.epoch + 1)


class FeatureCache(Callback):
    """--freeze backbone (on the fast path, without mixing or an attack): nothing before the head changes, so its
    outputs are computed once (training/features.py), not once an epoch; the epochs and validation read them, and the
    head alone is the step's model."""

    order = 200  # after every on_fit_start that may change the model (airnet's whitening from data, yours)

    def on_fit_start(self, trainer) -> None:
        t, plan = time.perf_counter(), trainer.plan
        cfg = plan.cfg
        trainer.train_feed, trainer.eval_feed = build_feature_feeds(
            trainer.state.model,
            cfg.model,
            trainer.data.train,
            trainer.data.val,
            views=cfg.feature_views,
            seed=cfg.seed,
            device=plan.device,
            amp=plan.amp,
            channels_last=cfg.channels_last,
            batch_size=cfg.batch_size,
        )
        trainer.step_model = head_of(trainer.state.model, cfg.model)
        trainer.info("frozen-feature cache built in %.1f s", time.perf_counter() - t)
