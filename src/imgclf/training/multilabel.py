"""Multi-label training (--task multilabel, docs/multilabel.md): the task a run trains for, resolved once and its
options checked (`resolve_task`, called by plan.resolve before any work); the loss (`task_loss`: binary
cross-entropy on the multi-hot targets, with --pos-weight and label smoothing); the balance it means
(`choose_multilabel_balance`); the validation columns (`multilabel_columns`); the thresholds fitted at each
checkpoint (`fit_for`).

The options and what they mean with several labels per image:
- the loss: binary cross-entropy (a sigmoid per label) on float multi-hot targets, which the feeds yield, summed
  over the labels and averaged over the images (MultiLabelLoss says why).
- --pos-weight auto, and --balance weights: each label's positive images weighted by negatives/positives on the
  train split, at most POS_WEIGHT_CAP. --balance sampler: each epoch drawn so that every image's rarest label
  (its stratum, data/multilabel.py) is equally likely. --balance auto: from the labels' counts, as for classes.
- --label-smoothing e: each target y becomes y(1-e)+e/2 (towards 1/2, the uniform guess of one sigmoid). The fast
  recipe's 0.2 is tuned for a softmax over 10 classes, and pulls every absent label to 0.1: the recipe leaves it
  out for multi-label (a --label-smoothing given is used).
- mixup, cutmix: the same convex combination of the multi-hot targets (data/mixing.py).
- refused: --adv-train (its attacks and robust accuracy are single-label), --curriculum (its difficulties are
  single-label losses from `imgclf score`), --calibrate (one temperature per label is `imgclf calibrate`'s),
  --monitor val_acc and val_robust_acc (no accuracy: val_mAP, the default, val_loss, val_micro_f1 or val_macro_f1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.core.errors import UsageError
from imgclf.core.multilabel import DEFAULT_THRESHOLD, MULTILABEL, SINGLE
from imgclf.data.balance import choose_balance
from imgclf.data.sources import listed_task, single_label_data
from imgclf.evaluation.multilabel import fit_thresholds, multilabel_metrics, parse_goal
from imgclf.training.recipes import RECIPES

# --pos-weight auto's largest weight: negatives/positives of a label in 1 image of 101. Past it one rare positive
# would outweigh a whole batch of negatives and a step's gradient would hang on whether a batch holds one; the
# thresholds fitted on validation absorb the shift in the scores the weight causes either way.
POS_WEIGHT_CAP = 100.0

MULTILABEL_MONITORS = ("val_mAP", "val_loss", "val_micro_f1", "val_macro_f1")
# the columns of a checkpoint's "metrics" (its name there, the row's column after "val_"), by task
SUMMARY = {
    SINGLE: (("accuracy", "acc"), ("loss", "loss"), ("macro_f1", "macro_f1")),
    MULTILABEL: (("mAP", "mAP"), ("loss", "loss"), ("micro_f1", "micro_f1"), ("macro_f1", "macro_f1")),
}


def summary_columns(task: str) -> tuple:
    """(a checkpoint's metric name, its column after "val_") of a run of `task`."""
    return SUMMARY[MULTILABEL if task == MULTILABEL else SINGLE]


def task_line(plan, criterion) -> str:
    """The run log's line on a multi-label run: the task and where it came from, the loss and its weights."""
    cfg = plan.cfg
    how = "as asked (--task multilabel)" if "task" in cfg.explicit else "inferred from the data"
    loss = "binary cross-entropy summed over the labels"
    w = getattr(getattr(criterion, "bce", None), "pos_weight", None)
    if w is not None:
        loss += f" with pos_weight per label {float(w.min()):.3g}..{float(w.max()):.3g} (negatives/positives)"
    if cfg.label_smoothing:
        loss += f", targets smoothed to y(1-{cfg.label_smoothing:g})+{cfg.label_smoothing / 2:g}"
    elif cfg.recipe != "none" and "label_smoothing" not in cfg.explicit and RECIPES[cfg.recipe].get("label_smoothing"):
        loss += f" (--recipe {cfg.recipe}'s label smoothing left out for multi-label)"
    return f"multilabel, {how}; loss {loss}; thresholds fitted for --threshold {cfg.threshold} on validation"


def data_task(data: str | None, asked: str) -> str:
    """The task of `--data` for `--task asked` (auto: the data's own): a CSV manifest is listed (not decoded) and
    refuses a task it cannot be; class folders and named sets are single-label."""
    want = None if asked == "auto" else asked
    task = listed_task(data, want)
    path = Path(str(data or "")).expanduser()
    if task == SINGLE and want == MULTILABEL and (path.exists() or not path.suffix):
        raise single_label_data(data)
    return task


def resolve_task(cfg):
    """`cfg` with its task resolved (auto: the data's), its options checked for that task and the multi-label
    defaults filled (--monitor val_mAP; the fast recipe's label smoothing left out); before any work."""
    task = data_task(cfg.data, cfg.task)
    if task == SINGLE:
        check_single(cfg)
        return cfg.resolved(task=SINGLE)
    parse_goal(cfg.threshold)  # a goal that is none: one line, now
    changes = {"task": MULTILABEL}
    if "monitor" not in cfg.explicit:
        changes["monitor"] = "val_mAP"
    recipe_smoothing = cfg.recipe != "none" and "label_smoothing" not in cfg.explicit and cfg.label_smoothing
    if recipe_smoothing:
        changes["label_smoothing"] = 0.0
    out = cfg.resolved(**changes)
    check_multilabel(out)
    return out


def check_single(cfg) -> None:
    """The multi-label options refused on a single-label run, when they were set."""
    for key, flag in (("threshold", "--threshold"), ("pos_weight", "--pos-weight")):
        if key in cfg.explicit and getattr(cfg, key) != FIELD_DEFAULTS[key]:
            raise UsageError(
                f"{flag} is for multi-label runs, and {cfg.data} is single-label (one class per image): drop {flag}"
            )
    if cfg.monitor in ("val_mAP", "val_micro_f1"):
        raise UsageError(
            f"--monitor {cfg.monitor} is a multi-label metric, and {cfg.data} is single-label: monitor val_acc, "
            "val_loss or val_macro_f1"
        )


FIELD_DEFAULTS = {"threshold": "f1", "pos_weight": "none"}


def check_multilabel(cfg) -> None:
    """The options that make no sense with several labels per image, each refused in one line that says why."""
    why = None
    if cfg.adv_train != "none":
        why = "--adv-train's attacks and its robust accuracy are single-label (one class to push each image away from)"
    elif cfg.curriculum != "none":
        why = "--curriculum's difficulties are single-label losses (`imgclf score`)"
    elif cfg.calibrate:
        why = "--calibrate fits one temperature; run `imgclf calibrate RUN/best.pt` after training for one per label"
    elif cfg.monitor not in MULTILABEL_MONITORS:
        why = f"--monitor {cfg.monitor} is an accuracy: monitor {', '.join(MULTILABEL_MONITORS)}"
    elif cfg.balance == "weights" and "pos_weight" in cfg.explicit and cfg.pos_weight == "none":
        why = "--balance weights is --pos-weight auto for multi-label, and --pos-weight none was given: drop one"
    if why:
        raise UsageError(f"multi-label run: {why}")


# ---------------------------------------------------------------------------------------------- the loss


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on multi-hot targets, in fp32: summed over the labels and averaged over the images
    (`bce_per_image`), each target first smoothed to y(1-e)+e/2 when `smoothing` e > 0. `multilabel`: train_steps
    counts its hits per label.

    Summed, not averaged, over the labels: an image's loss then moves its logits as much as cross-entropy moves a
    single-label image's, so the learning rates and weight decay of a recipe keep their meaning. PyTorch's default
    mean over labels too divides every gradient by the number of labels while the weight decay stays: on CIFAR-10
    mosaics (10 labels) the fast recipe then learned several times slower (docs/multilabel.md)."""

    multilabel = True

    def __init__(self, pos_weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        if self.smoothing:
            targets = targets * (1.0 - self.smoothing) + self.smoothing / 2
        return self.bce(logits.float(), targets).sum(1).mean()


def bce_per_image(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Plain binary cross-entropy (no pos_weight, no smoothing) summed over the labels, averaged over the images:
    the scale of the training loss, for val_loss and results.json's `loss`."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return float(bce.sum(1).mean())


def pos_weights(targets) -> torch.Tensor:
    """float32 [C]: each label's negatives/positives among `targets` (N x C 0/1), at most POS_WEIGHT_CAP; 1 for a
    label with no positive image."""
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    pos = y.sum(0)
    w = (len(y) - pos) / pos.clamp(min=1)
    return torch.where(pos > 0, w.clamp(max=POS_WEIGHT_CAP), torch.ones_like(w)).float()


def task_loss(cfg, train_targets, device, *, weighted: bool | None = None) -> nn.Module:
    """The loss a run of `cfg` trains with: cross-entropy (single-label, without class weights) or MultiLabelLoss,
    weighted per label where `weighted` (default: --pos-weight auto) says."""
    if cfg.task != MULTILABEL:
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    weighted = cfg.pos_weight == "auto" if weighted is None else weighted
    w = pos_weights(train_targets).to(device) if weighted else None
    return MultiLabelLoss(w, cfg.label_smoothing)


def choose_multilabel_balance(mode: str, targets) -> tuple[str, str]:
    """--balance for multi-label, as data/balance.choose_balance decides for classes, from the labels' counts of
    positive images (a label's images count once per label they hold)."""
    counts = np.asarray(targets).sum(0).astype(np.int64)
    labels = np.repeat(np.arange(len(counts)), counts)
    balance, reason = choose_balance(mode, labels.tolist(), what="label")
    if balance == "weights":
        reason += " (multi-label: each label's positives weighted by negatives/positives, as --pos-weight auto)"
    elif balance == "sampler":
        reason += " (multi-label: every image's rarest label equally likely)"
    return balance, reason


# ---------------------------------------------------------------------------------------------- validation


def multilabel_columns(logits: torch.Tensor, targets: torch.Tensor, classes: list[str], prefix: str = "") -> dict:
    """The validation columns of a multi-label model: val_loss (plain BCE per image, `bce_per_image`), val_mAP, and
    val_micro_f1 and val_macro_f1 at DEFAULT_THRESHOLD (the fitted thresholds come at the checkpoint)."""
    loss = bce_per_image(logits, targets)
    m = multilabel_metrics(
        torch.sigmoid(logits.float()).numpy(), targets.numpy(), [DEFAULT_THRESHOLD] * len(classes), classes
    )
    mean_ap = m["mAP"] if m["mAP"] is not None else math.nan  # no label with a positive image in val
    return {
        prefix + "val_loss": loss,
        prefix + "val_mAP": mean_ap,
        prefix + "val_micro_f1": m["micro_f1"],
        prefix + "val_macro_f1": m["macro_f1"],
    }


def fit_for(cfg, scores: tuple | None) -> tuple[list[float] | None, list[str]]:
    """(thresholds, notes) for --threshold's goal from (probabilities, targets) of validation; (None, []) when
    there are none (a single-label run)."""
    if scores is None:
        return None, []
    return fit_thresholds(scores[0], scores[1], parse_goal(cfg.threshold))
