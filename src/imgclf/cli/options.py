"""Each command's options object: a dataclass of option fields, from which its flags, checks and --help are
generated (core/options.py). Options several commands share are declared once in core/shared_options.py (or
below, for those only the CLI has) and taken with `.field()`; train's options are TrainConfig's
(training/options.py) and serve's the server's (serve/options.py).

Torch-free: `imgclf --help` and `imgclf check` import this module and nothing that imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgclf.core.options import Opt, Range, opt
from imgclf.core.shared_options import (
    APPLY_FIXES,
    BATCH_SIZE,
    DATA_ROOT,
    DEVICE,
    EXPERIMENT,
    GROUP_BY,
    JSON,
    MIN_CONFIDENCE,
    MODEL_STORE_HELP,
    OOD_ACCEPT,
    OOD_BANK,
    OOD_SCORE,
    PRECISION,
    REGISTER,
    REJECT,
    SPLIT,
    TRACK,
    TRACKING_URI,
    TTA,
    WEIGHTS,
    WORKERS,
    Console,
)
from imgclf.core.tracking import check_tracking
from imgclf.evaluation.ood_data import check_ood_folder  # os and data/sources: torch-free
from imgclf.studies.strategies import DIVERSE_PREFILTER, STRATEGIES  # numpy only: --help imports no torch
from imgclf.training.options import TrainConfig

NPROC = Opt(
    None,
    "run as N processes on this machine: the same command under `torchrun --standalone --nproc-per-node N` "
    "(Gloo on CPUs, NCCL on GPUs; several machines: see the README); each rank gets the cores / N as threads",
    range=Range(ge=1),
)
MAX_EVAL_IMAGES = Opt(None, "accuracy on at most this many images of the split (seeded choice)", range=Range(ge=1))


@dataclass(frozen=True, kw_only=True)
class Launch:
    """--nproc, for the commands that run under torchrun (the table's `nproc`); main starts torchrun with it."""

    nproc: int | None = NPROC.field()


# ------------------------------------------------------------------------------------------------ training


@dataclass(frozen=True, kw_only=True)
class TrainConfigOptions:
    """The commands that take every TrainConfig option as a flag (the table's `train`), and --config; `train` is
    the TrainConfig made from the YAML file and the flags given (they win), as `make_config` makes it."""

    config: str | None = opt(None, "options from a YAML file (flags given here win)", metavar="FILE.yaml")
    train: TrainConfig | None = None


@dataclass(frozen=True, kw_only=True)
class TrainOptions(TrainConfigOptions):
    max_restarts: int | None = opt(
        None,
        "with --nproc: torchrun's --max-restarts N: a rank that dies restarts every rank (up to N times), and they "
        "continue from the run's latest checkpoint (as --resume auto)",
        ge=0,
    )


@dataclass(frozen=True, kw_only=True)
class LrFindOptions(TrainConfigOptions):
    SECTIONS = {"the sweep": "start_lr"}

    start_lr: float = opt(1e-7, "first lr of the sweep", gt=0)
    end_lr: float = opt(10.0, "last lr of the sweep", gt=0)
    steps: int = opt(100, "optimisation steps in the sweep", ge=2)


@dataclass(frozen=True, kw_only=True)
class TuneOptions(TrainConfigOptions):
    SECTIONS = {"the search": "budget"}

    budget: str | None = opt(
        None,
        "stop starting trials after this long, all sessions of the study together: 30m, 2h, 45s (a running trial "
        "ends with it)",
        metavar="TIME",
    )
    trials: int | None = opt(None, "stop after this many trials have ended (default 20 without --budget)", ge=1)
    space: str | None = opt(
        None,
        "the search space, a YAML file of OPTION: {type: float|int|categorical, low, high, log | choices} "
        "(default: the recipe's, docs/tune.md)",
        metavar="SPACE.yaml",
    )


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    weights: str = WEIGHTS.field()
    data: str | None = opt(None, "data to evaluate on (default: the data the model was trained on)")
    split: str = SPLIT.field()
    out: str | None = opt(None, "output folder (default: eval-SPLIT next to the weights)")
    data_root: str | None = DATA_ROOT.field()
    batch_size: int = BATCH_SIZE.field(256)
    device: str = DEVICE.field()
    workers: int | None = WORKERS.field()
    precision: str = PRECISION.field()
    json: bool = JSON.field(help="print eval.json instead of the report")
    tta: str | None = TTA.field()
    apply_fixes: str | None = APPLY_FIXES.field(
        help="a fixes.csv (`imgclf check --deep --fixes F`, reviewed): drop and relabel the images it names before evaluating, the files untouched; eval.json records it (default: the fixes the model was trained with, on its own data)"
    )
    ood_data: str | None = opt(
        None,
        "a folder of images the model was never taught (any layout, labels ignored): eval.json and report.html get "
        "each out-of-distribution score's AUROC, FPR at 95%% TPR and rejected fractions at the stored threshold "
        "against the split's images",
        metavar="DIR",
    )
    # --track mlflow (core/tracking.py)
    track: str = TRACK.field()
    tracking_uri: str | None = TRACKING_URI.field()
    experiment: str | None = EXPERIMENT.field()
    register: str | None = REGISTER.field()

    def check(self, given: frozenset[str]) -> None:
        """Before any work (and before --nproc starts its ranks): --ood-data names a folder holding an image;
        --track's options."""
        if self.ood_data is not None:
            check_ood_folder(self.ood_data)
        check_tracking(self.track, self.tracking_uri, self.register)


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    weights: str = WEIGHTS.field(help="checkpoint to calibrate (rewritten in place), e.g. runs/NAME/best.pt")
    data: str | None = opt(None, "data to fit on (default: the data the model was trained on)")
    split: str = SPLIT.field(help="split to fit on: never the one you report results on")
    data_root: str | None = DATA_ROOT.field()
    batch_size: int = BATCH_SIZE.field(256)
    device: str = DEVICE.field()
    workers: int | None = WORKERS.field()
    threshold: str | None = opt(
        None,
        "multi-label models: fit the per-label thresholds again on the same split, for f1, precision=P, recall=R or "
        "one number (default: carry them with the new temperatures, so no image's labels change)",
        metavar="GOAL",
    )
    ood_bank: int | None = OOD_BANK.field(
        None, help=OOD_BANK.help + f" [as the checkpoint was fitted, else {OOD_BANK.default}]"
    )
    ood_accept: float | None = OOD_ACCEPT.field(
        None, help=OOD_ACCEPT.help + f" [as the checkpoint was fitted, else {OOD_ACCEPT.default}]"
    )
    json: bool = JSON.field()


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions:
    SECTIONS = {"attacks": "attack", "corruptions": "corruptions", "the run": "limit"}

    weights: str = WEIGHTS.field(help="checkpoint (runs/NAME/best.pt), or a file from imgclf export (corruptions only)")
    data: str | None = opt(None, "data to measure on (default: the data the model was trained on)")
    split: str | None = SPLIT.field(None, help="val, test or train [test if the data has one, else val]")
    attack: str | None = opt(None, "attacks, comma-separated: fgsm, pgd", metavar="fgsm,pgd")
    eps: str | None = opt(
        None,
        "L-infinity radii in pixel units of the [0, 1] image, as fractions or decimals; eps 0 (clean) is always "
        "measured [1/255,2/255,4/255,8/255]",
        metavar="LIST",
    )
    steps: int = opt(10, "PGD steps", ge=1)
    step_size: str | None = opt(None, "PGD step in pixel units, as in 2/255 [2.5 * eps / steps]", metavar="ALPHA")
    corruptions: bool = opt(False, "accuracy under common corruptions (any format)")
    severities: str = opt("1,2,3,4,5", "corruption severities, of 1-5")
    limit: int | None = opt(None, "measure on N images of the split (a seeded choice, the same every run)", ge=1)
    seed: int = opt(0, "seeds PGD's random start and the corruptions' noise")
    out: str | None = opt(None, "output folder (default: robustness-SPLIT next to the weights)")
    data_root: str | None = DATA_ROOT.field()
    batch_size: int = BATCH_SIZE.field(256)
    device: str = DEVICE.field()
    workers: int | None = WORKERS.field()
    json: bool = JSON.field(help="print robustness.json instead of the table")


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    weights: str = WEIGHTS.field(help="a reference model: checkpoint (runs/NAME/best.pt) or a file from imgclf export")
    data: str | None = opt(None, "data to score (default: the data the model was trained on)")
    out: str | None = opt(None, "CSV to write (default: difficulty.csv next to the weights)")
    data_root: str | None = DATA_ROOT.field()
    batch_size: int = BATCH_SIZE.field(256)
    device: str = DEVICE.field()
    workers: int | None = WORKERS.field()


@dataclass(frozen=True, kw_only=True)
class ExplainOptions:
    weights: str = WEIGHTS.field(help="checkpoint (runs/NAME/best.pt)")
    images: list[str] = opt(
        help="image files or folders (searched recursively)", positional=True, nargs="+", metavar="IMAGE"
    )
    target: str | None = opt(
        None,
        "explain this class for every image [the predicted class; a multi-label model: its top-scoring label]",
        metavar="LABEL",
    )
    out: str | None = opt(None, "output folder (default: explain/ next to the weights)")
    sheet: bool = opt(False, "also write every overlay on one contact sheet")
    max_side: int = opt(1024, "overlay PNGs scaled down to this longer side", ge=16)
    batch_size: int = BATCH_SIZE.field(8)
    device: str = DEVICE.field()
    json: bool = JSON.field(help="one JSON object per image")


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    folder: str = opt(help="runs/NAME, or an eval-SPLIT folder", positional=True, metavar="RUN_OR_EVAL_DIR")


@dataclass(frozen=True, kw_only=True)
class CardOptions:
    weights: str = opt(help="checkpoint (runs/NAME/best.pt): its run folder is read beside it", positional=True)
    out: str | None = opt(None, "write the card here [MODEL_CARD.md beside the checkpoint]", metavar="PATH")


# ------------------------------------------------------------------------------------------------ prediction


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    SECTIONS = {"output": "json", "the model": "batch_size"}

    weights: str = WEIGHTS.field()
    paths: list[str] = opt(
        [], "image files or folders (searched recursively)", positional=True, nargs="*", metavar="PATH"
    )
    files_from: str | None = opt(
        None,
        "also predict the images listed in LIST, one path a line (blank and # lines skipped; - reads stdin)",
        metavar="LIST",
    )
    top_k: int = opt(5, "labels per image in top_k (clamped to the class count)", ge=1)
    json: bool = JSON.field(help="one JSON object per line")
    output: str | None = opt(
        None,
        "also write the predictions to FILE: .csv, .json (an array), .jsonl (JSON lines) or .parquet",
        metavar="FILE",
    )
    resume: bool = opt(
        False, "continue a stopped run of the same command: keep the rows in FILE.parts and predict the rest"
    )
    part_rows: int = opt(
        10_000, "Parquet: rows per part file written as the run goes (a kill loses at most these)", ge=1
    )
    batch_size: int = BATCH_SIZE.field(32)
    device: str = DEVICE.field()
    precision: str = PRECISION.field()
    tta: str | None = TTA.field()
    min_confidence: float | None = MIN_CONFIDENCE.field()
    threshold: str | None = opt(
        None, "a multi-label model: this one threshold (0 to 1) for every label instead of its own", metavar="T"
    )
    reject: str | None = REJECT.field()
    ood_score: str | None = OOD_SCORE.field()
    tracking_uri: str | None = TRACKING_URI.field(help=MODEL_STORE_HELP)


@dataclass(frozen=True, kw_only=True)
class SelectOptions:
    weights: str = WEIGHTS.field()
    pool: str = opt(help="unlabelled images: a folder (searched recursively) or a CSV with a path column")
    budget: int = opt(help="images to select", ge=1)
    strategy: str = opt("entropy", f"how to rank the pool: {', '.join(STRATEGIES)}", STRATEGIES)
    exclude: list[str] = opt(
        [],
        "already-labelled images, left out of the pool: a CSV with a path column (relative to the CSV) or a "
        "folder; repeat for several",
        metavar="MANIFEST",
        repeat=True,
    )
    out: str | None = opt(None, "output folder (default: select-STRATEGY next to the weights)")
    seed: int = opt(0, "for random and diverse")
    batch_size: int = BATCH_SIZE.field(32)
    device: str = DEVICE.field()
    precision: str = PRECISION.field()


SELECT_DESCRIPTION = (
    "Score every image of a pool with a model (any format predict reads) and pick --budget of them by a "
    "strategy; writes OUT/selected.csv (path, score, predicted_label, probability) and OUT/contact_sheet.png. "
    "Strategies: entropy, margin, least-confidence (most uncertain first), random, diverse (one pick per k-means "
    f"cluster of the {DIVERSE_PREFILTER} x N most uncertain images on the model's penultimate features; "
    "checkpoints only). See docs/active_learning.md."
)


@dataclass(frozen=True, kw_only=True)
class ActiveSimOptions:
    SECTIONS = {"the features": "features", "the run": "out"}

    data: str = opt(help="labelled data: a folder, a CSV, or cifar10/cifar100/digits")
    strategies: str = opt("entropy,margin,diverse,random", "comma-separated")
    start: int = opt(20, "labelled images at the start", ge=1)
    budget: int = opt(20, "images labelled per round", ge=1)
    rounds: int = opt(5, "rounds of selection", ge=1)
    seeds: int = opt(3, "repetitions with other start sets", ge=1)
    start_mode: str = opt("stratified", "how the start set is drawn: stratified or random", ("stratified", "random"))
    pool_size: int | None = opt(None, "use a seeded subset of this many train images [all]", ge=1)
    eval_size: int | None = opt(None, "evaluate on a seeded subset of this many images [all]", ge=1)
    eval_split: str | None = opt(None, "split to measure accuracy on [test if the data has one, else val]")
    features: str = opt(
        "efficientnet_lite0",
        "frozen backbone: a model with pretrained weights (imgclf models) or a checkpoint",
        metavar="MODEL_OR_CHECKPOINT",
    )
    img_size: int | None = opt(None, "input size for a registry model [its own]", ge=1)
    batch_size: int = BATCH_SIZE.field(64, help="images per batch for the features")
    out: str = opt(os.path.join("runs", "active-sim"), "output folder")
    seed: int = opt(0, "first seed; the others follow it")
    data_root: str | None = DATA_ROOT.field()
    device: str = DEVICE.field()
    json: bool = JSON.field(help="print the summary as JSON")


# ------------------------------------------------------------------------------------------------ data and tools


@dataclass(frozen=True, kw_only=True)
class CheckOptions(Console):
    data: str = opt(
        help="folder of class folders (with or without train/val/test), a CSV manifest, or cifar10, cifar100, digits",
        positional=True,
    )
    json: bool = JSON.field(help="print the report as JSON")
    workers: int | None = opt(None, "decoding processes (default: all cores)", ge=1)
    apply_fixes: str | None = APPLY_FIXES.field(
        help="a fixes.csv (reviewed): check the data as it would be with it, dropped images skipped and relabelled ones counted under their new label; the files untouched"
    )
    group_by: str | None = GROUP_BY.field(
        help="report groups of images found on more than one split (group-leak): a column of the CSV manifest naming each image's group, or a regular expression searched in each path relative to the data folder whose match (its first group, if it has one) names the group"
    )
    data_root: str | None = DATA_ROOT.field()
    deep: bool = opt(
        False, "also find wrong labels, near-duplicates and outliers with a pretrained model's features (needs torch)"
    )
    model: str | None = opt(
        None, "with --deep: a pretrained model (default efficientnet_lite0) or a checkpoint (its backbone)"
    )
    folds: int | None = opt(None, "with --deep: cross-validation folds for the label issues (default 5)", ge=2)
    out: str | None = opt(None, "with --deep: the output folder for check.json (default checks/DATA_NAME)")
    fixes: str | None = opt(None, "with --deep: write the findings to review as FILE (fixes.csv)", metavar="FILE")
    device: str = DEVICE.field(help=DEVICE.help + " (with --deep)")
    batch_size: int | None = BATCH_SIZE.field(None, help="with --deep: images per batch (default 128)")


@dataclass(frozen=True, kw_only=True)
class SamplesOptions:
    data: str = opt(help="a data source, e.g. digits or cifar10", positional=True)
    out: str = opt(help="folder to write CLASS/NAME image files into")
    split: str = SPLIT.field(help="split to take images from")
    n: int = opt(10, "number of images", ge=1)
    data_root: str | None = DATA_ROOT.field()


@dataclass(frozen=True, kw_only=True)
class EnvOptions:
    json: bool = JSON.field(help="print it as JSON")
    probe: str | None = opt(None, "run (or read the cached) training-precision probe for MODEL now", metavar="MODEL")
    img_size: int | None = opt(None, "input size for --probe (default: the model's own)", ge=1)
    batch_size: int = BATCH_SIZE.field(128, help="batch size for --probe")
    refresh: bool = opt(False, "with --probe: measure again instead of reading the cache")


@dataclass(frozen=True, kw_only=True)
class ModelsOptions:
    json: bool = JSON.field(help="print the list as JSON")
    timm: str | None = opt(
        None,
        "list the timm models matching PATTERN ('resnet*', '*vit*'), usable as --model timm:NAME (needs pip "
        "install timm)",
        metavar="PATTERN",
    )
