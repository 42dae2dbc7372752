"""--adv-train as callbacks: the attack on each training batch, the robust validation after each epoch, and the
warning of catastrophic overfitting. The attacks themselves are training/adversarial.py's."""

from __future__ import annotations

import logging

import torch

from imgclf.core.callback import Callback
from imgclf.training.adversarial import Perturb, robust_correct, robust_subset
from imgclf.training.build import epoch_seeds


class AdversarialTraining(Callback):
    """Each training batch replaced by its attacked version on the device, just before the forward pass that
    trains; with --adv-val-images, the PGD-10 accuracy at --adv-eps on a seeded subset of the validation images
    after each epoch (the val_robust_acc column, and results.json's "robust")."""

    order = 18

    def __init__(self, plan, data, model):
        cfg, prep = plan.cfg, data.preprocess
        self.perturb = Perturb(
            model,
            cfg.adv_train,
            plan.adv_eps,
            cfg.adv_steps,
            step_size=plan.adv_step,
            mean=prep.mean,
            std=prep.std,
            channels_last=cfg.channels_last,
            device=plan.device,
            amp=plan.amp,
        )
        self.subset = robust_subset(len(data.val), cfg.adv_val_images) if cfg.adv_val_images else None

    def on_epoch_start(self, trainer) -> None:
        # the attack's random starts: per epoch and rank, so a resumed run draws them again
        _, own = epoch_seeds(trainer.plan.cfg.seed, trainer.state.epoch + 1, trainer.plan.world.rank)
        self.perturb.generator = torch.Generator().manual_seed((own * 31 + 17) % 2**63)

    def on_device_batch(self, trainer, x, y):
        return self.perturb(x, y)

    def on_validate(self, trainer, row: dict) -> None:
        if self.subset is None:
            return
        plan, prep = trainer.plan, trainer.data.preprocess
        correct, seen = robust_correct(
            trainer.step_model,
            trainer.eval_feed,
            self.subset,
            plan.adv_eps,
            mean=prep.mean,
            std=prep.std,
            channels_last=plan.cfg.channels_last,
            device=plan.device,
            amp=plan.amp,
            world=plan.world,
        )
        row["val_robust_acc"] = correct / max(1, seen)

    def on_fit_end(self, trainer) -> None:
        if self.subset is None or not trainer.plan.world.main:
            return
        best = trainer.state.best["epoch"]
        best_row = trainer.state.rows[best - 1] if best else {}
        trainer.results["robust"] = {
            "attack": "pgd",
            "steps": 10,
            "eps": trainer.plan.cfg.adv_eps,
            "images": len(self.subset),
            "val_robust_acc": best_row.get("val_robust_acc"),
        }


class OverfitWarning(Callback):
    """One warning, in the log and train.log, when an epoch shows catastrophic overfitting's signature (Wong et al.
    2020): the model fits its own attacked training batches (`train_acc`) far better than PGD-10 can be resisted
    on validation (`val_robust_acc` below MAX_ROBUST, at least GAP under train_acc). Measured on the fast recipe
    (docs/adversarial_training.md): FGSM training with airbench's whitening showed it from its first epoch
    (train_acc 0.33, val_robust_acc 0.004) and with a tenth of the bounded whitening regulariser from its second
    (0.41, 0.014); PGD, N-FGSM and FGSM with the bounded whitening did not (val_robust_acc above 0.05 at every
    epoch). It changes nothing in the run."""

    order = 70
    state_key = "adv_overfit_warning"
    GAP, MAX_ROBUST = 0.3, 0.05
    ALTERNATIVES = {"fgsm": "pgd or nfgsm", "nfgsm": "pgd"}  # what to try instead of each attack

    def __init__(self, kind: str):
        self.kind, self.warned = kind, False

    def on_validation_end(self, trainer, row: dict) -> None:
        robust, fitted = row.get("val_robust_acc"), row.get("train_acc")
        if self.warned or robust is None or fitted is None:
            return
        if robust < self.MAX_ROBUST and fitted - robust >= self.GAP:
            self.warned = True
            trainer.run_dir.say(
                logging.WARNING,
                "epoch %d: catastrophic overfitting: %.3f of the attacked training images right, %.3f of the "
                "validation images under PGD-10 - the model learnt the one attack it trains on, not robustness; "
                "try --adv-train %s, a smaller --adv-step or a lower --lr (docs/adversarial_training.md)",
                row["epoch"],
                fitted,
                robust,
                self.ALTERNATIVES.get(self.kind, "pgd with more --adv-steps"),
            )
