"""The built-in callbacks, and which of them a run's options ask for (`standard`). Each runs at the hooks and
under the contract of imgclf.core.callback; at every hook the callbacks run by `order`:

    order  callback             state key              what it does
        5  EMA                  (TrainState's "ema")   --ema: averages each step's weights; ema_val_* columns
       10  TimeBudget           time_budget            --time-budget: the steps that fit, from the first ones and each epoch
       15  Mixing               -                      --mixup/--cutmix: each batch mixed, on the CPU
       18  AdversarialTraining  -                      --adv-train: each batch attacked on the device; val_robust_acc
       20  the model's own      (airnet_whitening...)  its registry entry's (ModelSpec.callbacks)
       30  FreezeThenUnfreeze   freeze_then_unfreeze   --freeze-epochs
       40  Lookahead            lookahead              --lookahead
       50  EarlyStopping        early_stopping         --patience
       60  Histograms           histograms             --log-histograms, and the stop of a diverging run
       70  OverfitWarning       adv_overfit_warning    --adv-train: catastrophic overfitting, once
       80  Curriculum           curriculum             --curriculum: each epoch's draw from the pool
      100  yours (Callback's default order)
      200  FeatureCache         -                      --freeze backbone: the head trains on cached features
      210  Distillation         distillation           --teacher: the loss with the teacher's term, its logits
      900  Checkpointing        -                      best.pt, epoch_N.pt, last.pt, metrics.csv, the epoch's line
     1000  FinalReport          -                      best.pt validated again, plots, results.json, report.html, MODEL_CARD.md
     1100  Tracking             tracking               --track mlflow (rank 0): parameters, metrics, files, registry

A "-" key is the class name (the callback saves no state).
"""

from __future__ import annotations

from imgclf.core.callback import Callback
from imgclf.data.mixing import make_mixer
from imgclf.training.adversarial import robust_val_images
from imgclf.training.callbacks.adversarial import AdversarialTraining, OverfitWarning
from imgclf.training.callbacks.averaging import EMA, Lookahead
from imgclf.training.callbacks.budget import TimeBudget
from imgclf.training.callbacks.checkpoint import Checkpointing
from imgclf.training.callbacks.curriculum import Curriculum
from imgclf.training.callbacks.distill import Distillation
from imgclf.training.callbacks.freezing import FeatureCache, FreezeThenUnfreeze
from imgclf.training.callbacks.histograms import Histograms
from imgclf.training.callbacks.mixing import Mixing
from imgclf.training.callbacks.report import FinalReport
from imgclf.training.callbacks.stopping import EarlyStopping
from imgclf.training.callbacks.tracking import Tracking
from imgclf.training.plan import RunData, RunPlan
from imgclf.training.state import TrainState, trained_part

__all__ = [
    "EMA",
    "AdversarialTraining",
    "Checkpointing",
    "Curriculum",
    "Distillation",
    "EarlyStopping",
    "FeatureCache",
    "FinalReport",
    "FreezeThenUnfreeze",
    "Histograms",
    "Lookahead",
    "Mixing",
    "OverfitWarning",
    "TimeBudget",
    "Tracking",
    "standard",
]


def standard(plan: RunPlan, data: RunData, state: TrainState) -> list[Callback]:
    """The built-in callbacks `plan`'s options ask for, and the model's own, in registration order."""
    cfg, out = plan.cfg, []
    if state.ema is not None:
        out.append(EMA())
    if plan.budget_pending:
        # validation is charged per forward pass: the model's own views, twice with an EMA to validate too
        views = plan.spec.eval_views * (2 if cfg.ema else 1)
        extra = robust_val_images(cfg, plan.spec)
        out.append(TimeBudget(cfg.time_budget, cfg.batch_size * cfg.accumulate, views, extra, fill=plan.fills_budget))
    mixer = make_mixer(cfg, len(data.source.classes))
    if mixer is not None:
        out.append(Mixing(mixer))
    if cfg.adv_train != "none":
        out.append(AdversarialTraining(plan, data, state.model))
    out += plan.spec.callbacks() if plan.spec.callbacks else []
    if cfg.freeze_epochs:
        out.append(FreezeThenUnfreeze(cfg.freeze_epochs, list(plan.frozen)))
    if cfg.lookahead:
        out.append(Lookahead(trained_part(plan, state.model)))
    if cfg.patience:
        out.append(EarlyStopping(cfg.patience, cfg.monitor))
    if cfg.log_histograms:
        out.append(Histograms(cfg.log_histograms))
    if plan.robust_validation:
        out.append(OverfitWarning(cfg.adv_train))
    if cfg.curriculum != "none":
        out.append(Curriculum(plan.difficulty, cfg.curriculum, cfg.pacing, cfg.pacing_start, cfg.pacing_full))
    if plan.feature_cache:
        out.append(FeatureCache())
    if data.teacher is not None:
        out.append(Distillation(data.teacher, cfg.distill_weight, cfg.distill_temperature))
    out += [Checkpointing(), FinalReport()]
    if cfg.track != "none" and plan.world.main:  # under torchrun only rank 0 logs
        out.append(Tracking(cfg))
    return out
