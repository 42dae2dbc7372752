"""--teacher: knowledge distillation as a callback (training/distill.py: the teacher and the loss)."""

from __future__ import annotations

import torch

from imgclf.core.callback import Callback
from imgclf.core.errors import UsageError
from imgclf.evaluation.metrics import compute_metrics
from imgclf.infer.logits import infer
from imgclf.training.distill import DistillLoss, Teacher
from imgclf.training.features import FeatureFeed, train_views


class Distillation(Callback):
    """The step's loss becomes `DistillLoss` (the usual loss and the teacher's term), and each training batch gets
    the teacher's logits: computed on the fly from the batch as the student gets it (augmented, mixed; before an
    adversarial attack, which the student alone sees), or, with the frozen-feature cache, once per image and view
    (the cache's views are fixed images: the teacher's logits are cached beside the features). The teacher's
    val accuracy on the run's own validation split, its file and digest, A and T go to results.json ("teacher").
    Its state is the teacher's digest: a resumed run with another teacher file is refused."""

    order = 210  # after the frozen-feature cache (200) set the feeds; on_batch after Mixing (15)
    state_key = "distillation"

    def __init__(self, teacher: Teacher, weight: float, temperature: float):
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)
        self.loss: DistillLoss | None = None
        self.width: int | None = None  # with the feature cache: the features' width; the teacher's logits follow

    def on_fit_start(self, trainer) -> None:
        self.loss = DistillLoss(trainer.criterion, self.weight, self.temperature)
        trainer.criterion = self.loss
        if isinstance(trainer.train_feed, FeatureFeed):
            self._cache(trainer)
        how = "cached per image and view" if self.width is not None else "on the fly"
        t = self.teacher
        trainer.info(
            "distillation: teacher %s (%s%s), A %g, T %g, its logits %s",
            t.source,
            t.name,
            ", classes mapped by name" if t.order is not None else "",
            self.weight,
            self.temperature,
            how,
        )

    def _cache(self, trainer) -> None:
        """The teacher's logits of the cache's views (views x N x C), appended to its features."""
        cfg, feed = trainer.plan.cfg, trainer.train_feed
        views = train_views(trainer.data.train, cfg.feature_views, cfg.seed)
        logits = torch.stack([infer(self.teacher, b, desc=f"teacher view {v}")[0] for v, b in enumerate(views)])
        self.width = feed.feats.shape[2]
        both = torch.cat([feed.feats, logits.to(feed.feats.dtype)], 2)
        trainer.train_feed = FeatureFeed(
            both, feed.labels, batch_size=feed.batch_size, eval_batch_size=feed.eval_batch_size
        )

    def on_batch(self, trainer, x, y):
        if self.width is not None:
            self.loss.teacher_logits = x[:, self.width :].to(trainer.plan.device)
            return x[:, : self.width], y
        x = x.to(trainer.plan.device)  # the step moves it there next anyway
        self.loss.teacher_logits = self.teacher.logits(x)
        return x, y

    def on_fit_end(self, trainer) -> None:
        record = self.teacher.record(self.weight, self.temperature)
        if trainer.plan.world.main:  # the teacher on the run's validation split as it sees it (the student's crops)
            logits, labels = infer(self.teacher, trainer.data.val.batches(), desc="teacher val")
            m = compute_metrics(logits, labels, trainer.data.source.classes)
            record |= {"val_acc": m["accuracy"], "val_images": len(labels)}
        trainer.results["teacher"] = record

    def state_dict(self) -> dict:
        return {"sha256": self.teacher.digest, "source": self.teacher.source}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sha256") != self.teacher.digest:
            raise UsageError(
                f"--teacher {self.teacher.source} is not the teacher this run was trained with "
                f"({state.get('source')}, sha256 {str(state.get('sha256'))[:12]}): resume with that file"
            )
