"""Every training option in one place: a type, a default and a line of help each.

The CLI's `train` flags are generated from this dataclass; `--config run.yaml` (read with yaml.safe_load)
sets the same keys; flags given on the command line win over the file. An unset option (`None`) means
"the model's or the data's own default", resolved once at the start of a run and written to config.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields

from imgclf.core.errors import CheckpointError, UsageError, did_you_mean
from imgclf.core.fileio import check_text
from imgclf.core.options import adv_eps, adv_step, check_output_folder, load_yaml, opt, out_of_range
from imgclf.core.shared_options import (
    APPLY_FIXES,
    BATCH_SIZE,
    DATA_ROOT,
    DEVICE,
    EXPERIMENT,
    GROUP_BY,
    OOD_ACCEPT,
    OOD_BANK,
    REGISTER,
    TRACK,
    TRACKING_URI,
    WORKERS,
)
from imgclf.core.tracking import check_tracking

log = logging.getLogger(__name__)

# how to fix a --difficulty file that cannot be used
DIFFICULTY_FIX = "give a UTF-8 CSV of path,loss (`imgclf score WEIGHTS --data D` writes one) or auto"


@dataclass
class TrainConfig:
    # the groups of `imgclf train --help`: each starts at the option named, in the order of the fields below
    SECTIONS = {
        "data": "data",
        "model": "model",
        "optimisation": "epochs",
        "adversarial training and curriculum learning": "adv_train",
        "machinery": "device",
        "outputs": "out",
    }

    recipe: str = opt(
        "none",
        "a preset of the options below that you do not set yourself: fast (airnet, airbench94-style optimisation, for 32 px images from scratch; pair with --time-budget) or none",
        ("none", "fast"),
    )
    # data
    data: str | None = opt(
        None,
        "folder of class folders (with or without train/val/test), a CSV of path,label[,split], or cifar10, cifar100, digits",
    )
    data_root: str | None = DATA_ROOT.field()
    task: str = opt(
        "auto",
        "single (one class per image, softmax) or multilabel (any set of labels per image: a sigmoid per label and binary cross-entropy; docs/multilabel.md), or auto: the data's own (a CSV manifest with a labels column, a|b cells or 0/1 label columns is multi-label); the run log says which",
        ("auto", "single", "multilabel"),
    )
    val_fraction: float = opt(
        0.2, "fraction of train held out for validation when the data has no val split (stratified, seeded)", gt=0, lt=1
    )
    apply_fixes: str | None = APPLY_FIXES.field(
        help="a fixes.csv (`imgclf check --deep --fixes F` writes one; review and edit it): drop and relabel the images it names before validation is carved, the data's files untouched; the run keeps a copy of the rows applied (fixes_applied.csv) and results.json records them"
    )
    group_by: str | None = GROUP_BY.field(
        help="keep groups of images on one side of the carved validation split: a column of the CSV manifest naming each image's group (patient, video, object), or a regular expression searched in each path relative to the data folder whose match (its first group, if it has one) names the group; with the data's own val split, the groups it puts on both sides are reported"
    )
    threshold: str = opt(
        "f1",
        "multi-label: the per-label thresholds fitted on the validation split at the end, stored in the checkpoint: f1 (each label's best F1), precision=P, recall=R, or one number for every label (e.g. 0.5)",
    )
    pos_weight: str = opt(
        "none",
        "multi-label: auto weighs each label's positive images by its negatives/positives on the train split (at most 100), so rare labels count in the loss (BCEWithLogitsLoss pos_weight); none: no weight",
        ("none", "auto"),
    )
    # model
    model: str = opt("resnet18", "model name; `imgclf models` lists them")
    pretrained: bool = opt(False, "start from ImageNet weights (the head is replaced for the data's classes)")
    weights_file: str | None = opt(
        None,
        "with --pretrained: the pretrained weights from this state dict (.pth or .safetensors) instead of the model's download cache; the head is replaced for the data's classes",
    )
    freeze: str = opt(
        "none", "backbone (only the new head trains), none (all layers train), or N (the first N stages frozen)"
    )
    img_size: int | None = opt(
        None,
        "input size in pixels (default: the model's pretrained size with --pretrained, else the data's own size when all images share one, else 224); at least the model's own minimum (32 for ResNet, EfficientNet and VGG)",
        ge=1,
    )
    augment: str = opt(
        "auto",
        "training augmentation: small (flip + zero-padded random crop), shift (flip + reflect-padded shift of up to 2 px), large (random resized crop + flip), none, or auto (small up to 64 px)",
        ("auto", "small", "shift", "large", "none"),
    )
    brightness: float = opt(0.0, "random brightness change per image, as a fraction (0: off)", ge=0, le=1)
    contrast: float = opt(0.0, "random contrast change per image, as a fraction (0: off)", ge=0, le=1)
    # `randaugment`, not `auto_augment`: the CLI makes each flag from the field's name
    randaugment: str = opt(
        "none",
        "an automatic augmentation policy after the crop and flip, drawn per image: randaugment (2 ops of magnitude 9 of 31, as torchvision's ImageNet recipe), trivialaugment (TrivialAugmentWide: 1 op, random magnitude) or none; made for ImageNet-size images",
        ("none", "randaugment", "trivialaugment"),
    )
    mixup: float = opt(
        0.0,
        "mixup: alpha of the Beta(alpha, alpha) mixing weight of each batch with itself shifted by one image (0: off; timm's ImageNet recipes use 0.1-0.8)",
        ge=0,
    )
    cutmix: float = opt(
        0.0,
        "cutmix: alpha of the Beta(alpha, alpha) area kept of each image when a box of its neighbour in the batch is pasted in (0: off; 1.0 as the CutMix paper)",
        ge=0,
    )
    mix_prob: float = opt(1.0, "chance that a batch is mixed at all when --mixup or --cutmix is on", ge=0, le=1)
    mix_switch_prob: float = opt(
        0.5, "with both --mixup and --cutmix on: chance that a mixed batch gets cutmix instead of mixup", ge=0, le=1
    )
    balance: str = opt(
        "none",
        "class balancing: weights (loss weighted n/(classes x count), as sklearn's 'balanced'), sampler (each epoch drawn with replacement, every class equally likely), none, or auto (from the train split's largest/smallest class ratio, as `imgclf check` reports it: none below 1.5, weights below 10, sampler from 10; the run log says which). Multi-label: weights is --pos-weight auto, sampler draws every image's rarest label equally likely, auto decides from the labels' counts",
        ("none", "weights", "sampler", "auto"),
    )
    # optimisation
    epochs: int = opt(30, "number of epochs", ge=1)
    batch_size: int = BATCH_SIZE.field(128, help="images per training batch")
    optimizer: str = opt(
        "sgd", "sgd, adamw, or muon (Muon for the convolution filters, sgd for the rest)", ("sgd", "adamw", "muon")
    )
    muon_lr: float = opt(0.24, "--optimizer muon: the convolution filters' learning rate (the rest take --lr)", gt=0)
    muon_momentum: float = opt(0.6, "--optimizer muon: the filters' (Nesterov) momentum", ge=0, lt=1)
    lr: float | str | None = opt(
        None,
        "learning rate (default: 0.01 for sgd, 0.001 for adamw), or auto: the one a learning-rate range test (`imgclf lr-find`) suggests, run first",
        gt=0,
        words=("auto",),
    )
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = opt(False, "SGD with Nesterov momentum")
    weight_decay: float | None = opt(None, "weight decay (default: 5e-4 for sgd, 0.05 for adamw)", ge=0)
    scheduler: str = opt(
        "step",
        "learning-rate schedule: step, cosine, warmup-linear (per step: 0.2x -> 1x over the first 23%% of steps, then down to 0.07x, as airbench) or none",
        ("step", "cosine", "warmup-linear", "none"),
    )
    step_size: int = opt(10, "step schedule: epochs between decays", ge=1)
    gamma: float = opt(0.5, "step schedule: factor per decay", gt=0, le=1)
    label_smoothing: float = opt(
        0.0,
        "multi-label: each target y becomes y(1-e)+e/2; single-label: cross-entropy label smoothing (1 would make "
        "every target uniform)",
        ge=0,
        lt=1,
    )
    bias_lr_scale: float = opt(
        1.0,
        "learning-rate multiplier for BatchNorm biases (their weight decay is divided by it, so the decay per step stays the same)",
        gt=0,
    )
    lookahead: bool = opt(
        False,
        "lookahead on the weights (airbench): every 5 steps, an average of the weights whose decay rises to 0.77 is copied back into the model; the final model is that average",
    )
    accumulate: int = opt(
        1, "gradient accumulation: one optimiser step every N batches (an effective batch of N x --batch-size)", ge=1
    )
    clip_grad: float | None = opt(
        None, "clip the gradients' total L2 norm to this before each step (default: no clipping)", gt=0
    )
    freeze_epochs: int = opt(
        0,
        "train only the new head for the first N epochs (the backbone frozen), then everything (fastai's fine_tune; with --pretrained)",
        ge=0,
    )
    backbone_lr_scale: float = opt(
        1.0,
        "learning-rate multiplier for the pretrained layers once they train (fastai's fine_tune lowers them; 0.1 is a usual start)",
        gt=0,
        le=1,
    )
    ema: bool = opt(
        False,
        "keep an exponential moving average of the weights, evaluated every epoch; best.pt holds the better of the two and says which",
    )
    ema_decay: float = opt(
        0.999,
        "EMA decay per optimisation step: the average spans about 1/(1 - decay) steps (1,000 at 0.999, 2.6 CIFAR-10 epochs at batch 128; timm's 0.9998 is for ImageNet runs of 100,000s of steps)",
        gt=0,
        lt=1,
    )
    ema_warmup: int = opt(
        1000,
        "EMA warm-up in optimisation steps: the decay rises linearly from 0 to --ema-decay over them, so the average does not hold on to the first, random weights (0: --ema-decay from the first step)",
        ge=0,
    )
    patience: int | None = opt(
        None, "early stopping: stop when --monitor has not improved for N epochs (default: never)", ge=1
    )
    monitor: str = opt(
        "val_acc",
        "the validation metric that early stopping and best.pt follow (multi-label: val_mAP unless set; val_loss, val_micro_f1 or val_macro_f1 at 0.5)",
        ("val_loss", "val_acc", "val_macro_f1", "val_robust_acc", "val_mAP", "val_micro_f1"),
    )
    time_budget: float | None = opt(
        None,
        "minutes of training (the epoch loop, validation included): from the speed of the first steps, the run plans the steps and epochs that fill them, its schedule (warm-up, decay) spanning exactly those; with --epochs N, at most N epochs (only shortened to fit)",
        gt=0,
    )
    max_steps: int | None = opt(
        None, "optimisation steps in all (the schedule ends there); set from --time-budget when that is given", ge=1
    )
    compile: bool = opt(
        False,
        "torch.compile the model for training (the compile time is logged; see docs/training.md for when it pays)",
    )
    precision: str = opt(
        "auto",
        "auto (the fastest on this machine, never slower than fp32: bf16 or fp16 autocast on CUDA; on a CPU with native bf16 a short probe of the model decides, cached per machine and model - see `imgclf env`; else fp32), fp32, bf16 or fp16",
        ("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: bool = opt(
        True, "channels_last memory layout for the model and batches (faster convolutions on CPU and GPU)"
    )
    feature_cache: bool = opt(
        True,
        "with --freeze backbone: compute the frozen backbone's features once (plus --feature-views augmented views) and train the head on them",
    )
    feature_views: int = opt(
        2, "augmented views per training image in the frozen-feature cache, besides the plain one", ge=0
    )
    teacher: str | None = opt(
        None,
        "knowledge distillation (docs/training.md): a teacher whose softened probabilities the model also learns from - an imgclf checkpoint, an export that gives logits (ONNX, TorchScript, pt2), or timm:NAME (pretrained, ImageNet's 1000 classes); its class names must be the data's (any order)",
    )
    distill_weight: float = opt(
        0.5,
        "with --teacher: A in (1-A) x the usual loss + A x T^2 x KL(teacher || student) at temperature T",
        ge=0,
        le=1,
    )
    distill_temperature: float = opt(
        4.0, "with --teacher: T, the temperature both sets of logits are softened by (Hinton et al. 2015)", gt=0
    )
    calibrate: bool = opt(
        False,
        "after training: fit a temperature on the validation split (temperature scaling, as `imgclf calibrate`) and store it in best.pt; predict, evaluate, serve and exports then give calibrated probabilities",
    )
    ood_bank: int = OOD_BANK.field(
        help="after training: " + OOD_BANK.help + "; fitted on best.pt with its thresholds (docs/ood.md)"
    )
    ood_accept: float = OOD_ACCEPT.field()
    # adversarial training and curriculum learning (docs/adversarial_training.md, docs/curriculum.md)
    adv_train: str = opt(
        "none",
        "adversarial training: train on attacked images - fgsm (one step from a random start, step 1.25 x eps: Wong, Rice and Kolter 2020), nfgsm (noise of 2 x eps, one step of eps, no projection: de Jorge et al. 2022; FGSM's cost, less prone to catastrophic overfitting) or pgd (--adv-steps steps of 2.5 x eps / steps from a random start: Madry et al. 2018) - or none",
        ("none", "fgsm", "nfgsm", "pgd"),
    )
    adv_eps: str = opt(
        "8/255",
        "with --adv-train: the attack's L-infinity radius in pixel units (0-1, before normalisation), e.g. 8/255 or 0.03",
    )
    adv_step: str = opt(
        "",
        "with --adv-train: the attack's step size in pixel units, e.g. 10/255 (default: 1.25 x eps for fgsm, eps for nfgsm, 2.5 x eps / --adv-steps for pgd)",
    )
    adv_steps: int = opt(
        7, "with --adv-train pgd: attack steps per training batch (Madry et al. used 7 on CIFAR-10)", ge=1
    )
    adv_val_images: int = opt(
        1000,
        "with --adv-train: validation images (a seeded subset) attacked with PGD-10 at --adv-eps after each epoch, for the val_robust_acc column (0: none)",
        ge=0,
    )
    curriculum: str = opt(
        "none",
        "curriculum learning: easy-first (batches drawn from the easiest images, the pool growing to all of them by --pacing), hard-first (the hardest first), or none",
        ("none", "easy-first", "hard-first"),
    )
    pacing: str = opt(
        "linear",
        "with --curriculum: how the pool grows from --pacing-start of the images to all of them at --pacing-full of the steps: linear, root (square root, Platanios et al. 2019) or step (four equal steps)",
        ("linear", "root", "step"),
    )
    pacing_start: float = opt(
        0.2, "with --curriculum: the fraction of the images in the pool at the first step", gt=0, le=1
    )
    pacing_full: float = opt(
        0.8,
        "with --curriculum: the fraction of the optimisation steps after which every image is in the pool",
        gt=0,
        le=1,
    )
    difficulty: str = opt(
        "auto",
        "with --curriculum: each training image's difficulty - a CSV with columns path,loss (as `imgclf score` writes it) or auto (a short reference run of the same options first, one epoch or a fifth of --time-budget, scored as `imgclf score` does)",
    )
    # machinery
    device: str = DEVICE.field()
    workers: int | None = WORKERS.field()
    cache: str = opt(
        "auto",
        "decoded images: auto/disk (decoded once into a memory-mapped file, reused by later runs), memory, or none (decode every image every epoch, per-image transforms)",
        ("auto", "disk", "memory", "none"),
    )
    memory_check: bool = opt(
        True,
        "before any work, estimate the run's memory (weights, optimizer state, activations at --batch-size and the image size, per rank) and refuse a run that will not fit in what is available (--no-memory-check: warn and start anyway)",
    )
    seed: int = opt(0, "random seed for the split, initialisation, order and augmentation", ge=0, le=2**32 - 1)
    sync_bn: bool = opt(
        False,
        "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm; PyTorch runs it on GPUs only) instead of each rank's own",
    )
    dist_timeout: float = opt(
        300.0,
        "under torchrun: seconds a rank waits for the others before it stops the run (a rank that died or hangs)",
        gt=0,
    )
    # outputs
    out: str = opt("runs", "folder that holds run directories")
    name: str | None = opt(None, "run directory name (default: MODEL-DATA, numbered if taken)")
    save_every: int = opt(5, "also keep epoch_N.pt every N epochs (0: never)", ge=0)
    resume: str | None = opt(
        None,
        "continue a run from its last.pt (or any epoch checkpoint); auto: the latest checkpoint in OUT/NAME, or a new "
        "run there when it has none, and nothing to do (exit 0) when it has finished: a command to re-run until it "
        "succeeds",
    )
    log_histograms: int = opt(
        0,
        "every N optimisation steps, write per-layer gradient and activation histograms and norms to TensorBoard; a non-finite loss or an exploding gradient norm stops the run naming the step and the layer (0: off)",
        ge=0,
    )
    log_every: int = opt(50, "when stderr is not a terminal, a progress line every N training steps (0: none)", ge=0)
    # experiment tracking (issue 27: training/callbacks/tracking.py)
    track: str = TRACK.field()
    tracking_uri: str | None = TRACKING_URI.field()
    experiment: str | None = EXPERIMENT.field()
    register: str | None = REGISTER.field()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def explicit(self) -> frozenset[str]:
        """The options set by whoever made this config (keyword arguments, flags, YAML keys), as opposed to
        left at their defaults: a recipe fills only the others, and a resumed run honours only these."""
        return self._explicit

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes`, which count as set (`dataclasses.replace` would count every option as set)."""
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "_explicit", self._explicit | frozenset(changes))
        return new

    def resolved(self, **changes) -> TrainConfig:
        """A copy with values imgclf filled in (a recipe's, defaults that depend on other options): the options
        set stay the ones the user set."""
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "_explicit", self._explicit)
        return new


FIELDS = {f.name: f for f in fields(TrainConfig)}
_dataclass_init = TrainConfig.__init__


def _recording_init(self, *args, **kwargs):
    _dataclass_init(self, *args, **kwargs)
    object.__setattr__(self, "_explicit", frozenset(list(FIELDS)[: len(args)]) | frozenset(kwargs))


# Which options were given is recorded when the config is made, never guessed by comparing with defaults:
# TrainConfig(recipe="fast", epochs=30) has set `epochs` even where 30 is also the default.
_recording_init.__doc__, _recording_init.__wrapped__ = _dataclass_init.__doc__, _dataclass_init
TrainConfig.__init__ = _recording_init


HINTS = typing.get_type_hints(TrainConfig)


def field_type(name: str) -> type:
    """The concrete type of an option (int for `int | None`)."""
    t = HINTS[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def coerce(key: str, value, source: str):
    f = FIELDS[key]
    t = field_type(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in f.metadata["words"]:
        return value.strip().lower()
    try:
        if t is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        value = t(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: '{key}' must be {t.__name__}{_or_words(f)}, not {value!r}") from None
    check_value(key, value, source)
    return value


def check_value(key: str, value, source: str) -> None:
    """The one check of an option's value against its declared choices and range; `source` says where it came
    from ("command line" names the flag, a file or "options" the key)."""
    f = FIELDS[key]
    name = "--" + key.replace("_", "-") if source == "command line" else f"'{key}'"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(
            f"{source}: {name} must be one of {', '.join(choices)}, not '{value}'{did_you_mean(str(value), choices)}"
        )
    if value in f.metadata["words"]:
        return
    rng = f.metadata.get("range")
    if rng is not None and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{source}: {name} must be a number {rng}{_or_words(f)}, not {value!r}")
    problem = out_of_range(value, rng, f.metadata["words"])
    if problem:
        raise UsageError(f"{source}: {name} {problem}")


def _or_words(f) -> str:
    """' (or auto)' for an option that also takes words, else ''."""
    return f" (or {', '.join(f.metadata['words'])})" if f.metadata["words"] else ""


def check_config(cfg: TrainConfig, source: str = "options") -> None:
    """Every option of `cfg` against its choices and range (for a TrainConfig built in Python, which `coerce`
    never saw)."""
    for key in FIELDS:
        check_value(key, getattr(cfg, key), source)
    check_weights_file(cfg)


def check_weights_file(cfg: TrainConfig) -> None:
    """--weights-file before any work: it exists, and comes with --pretrained. A resumed run takes its weights
    from the checkpoint, so the file need not be there any more."""
    if cfg.weights_file is None or cfg.resume:
        return
    if not os.path.isfile(cfg.weights_file):
        raise UsageError(
            f"--weights-file '{cfg.weights_file}' does not exist: give the path of a state dict (.pth or .safetensors)"
        )
    if not cfg.pretrained:
        raise UsageError(
            f"--weights-file '{cfg.weights_file}' is where the --pretrained weights come from: add --pretrained"
        )


def make_config(values: dict | None = None, *, source: str = "options", config_file: str | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then `values` (explicit options win). Unknown keys: 'did you mean'."""
    merged: dict = {}
    layers = []
    if config_file:
        layers.append((load_yaml(config_file), config_file))
    layers.append((values or {}, source))
    for layer, where in layers:
        for k, v in layer.items():
            k = k.replace("-", "_")
            if k == "config":
                continue
            if k not in FIELDS:
                raise UsageError(f"{where}: unknown option '{k}'{did_you_mean(k, FIELDS)}")
            merged[k] = coerce(k, v, where)
    return TrainConfig(**merged)


# ---------------------------------------------------------------------------------------------- the checks
# Every check of a run's options that needs no data, in the order a user meets them: each option alone
# (check_config), the options together and with the model's limits (check_options), a checkpoint to resume
# (check_resumable), the machine and the ranks the run starts on (check_machine). training/plan.py calls them.


def check_options(cfg: TrainConfig, resume: dict | None, model_spec: Callable[[str], object]):
    """Every check that needs no data, first: a bad option must not cost a decode or leave a run folder. `resume`:
    the checkpoint a resumed run continues; `model_spec`: the registry's lookup (models.registry.get_spec, which
    refuses an unknown name; passed in so that this module stays torch-free). Returns the model's spec."""
    check_config(cfg)
    if not cfg.data:
        raise UsageError("no data given: pass --data with a folder, a CSV, or one of cifar10, cifar100, digits")
    spec = model_spec(cfg.model)
    if cfg.pretrained and spec.weights is None and not cfg.weights_file:
        raise UsageError(f"{cfg.model} has no pretrained weights; drop --pretrained to train it from scratch")
    if cfg.img_size is not None and cfg.img_size < spec.min_img_size:
        raise UsageError(too_small(cfg.img_size, spec))
    if cfg.freeze_epochs and cfg.freeze != "none":
        raise UsageError(
            f"--freeze-epochs {cfg.freeze_epochs} freezes the backbone for the first epochs and then trains "
            f"every layer; it cannot be combined with --freeze {cfg.freeze}: drop one of them"
        )
    check_adv_curriculum(cfg)
    check_tracking(cfg.track, cfg.tracking_uri, cfg.register)
    if resume is None:
        check_output_folder(cfg.out, "--out")
    else:
        check_unfinished(cfg, resume)
    return spec


def attack_values(cfg: TrainConfig) -> tuple[float | None, float | None]:
    """(--adv-eps, --adv-step) in pixel units (None: no --adv-train, or the attack's own step); a value that is
    not one number in (0, 1] is refused with one line."""
    if cfg.adv_train == "none":
        return None, None
    return adv_eps(cfg.adv_eps), adv_step(cfg.adv_step)


def check_adv_curriculum(cfg: TrainConfig) -> None:
    attack_values(cfg)
    if cfg.monitor == "val_robust_acc" and (cfg.adv_train == "none" or not cfg.adv_val_images):
        raise UsageError(
            "--monitor val_robust_acc follows the robust validation of --adv-train: add --adv-train fgsm, nfgsm or pgd "
            "(with --adv-val-images above 0), or monitor val_acc"
        )
    if cfg.curriculum == "none":
        return
    if cfg.balance in ("sampler", "auto"):
        raise UsageError(
            f"--curriculum draws each batch from its pool of images, --balance {cfg.balance} may draw them by class: "
            "use --balance weights (or none) with a curriculum"
        )
    if cfg.difficulty != "auto" and not cfg.resume:
        if not os.path.isfile(cfg.difficulty):
            raise UsageError(
                f"--difficulty '{cfg.difficulty}' not found: give a CSV of path,loss (`imgclf score WEIGHTS --data D` "
                "writes one) or auto"
            )
        check_text(cfg.difficulty, "--difficulty", fix=DIFFICULTY_FIX)


def too_small(img_size: int, spec) -> str:
    other = "" if spec.small else ", or a model for small images such as smallcnn"
    return (
        f"--img-size {img_size} is too small for {spec.name}, which takes at least {spec.min_img_size} px (below that "
        f"its strided and pooling layers leave no real pixels in its last feature map): pass --img-size "
        f"{spec.min_img_size} or more (smaller images are upscaled){other}"
    )


def check_resumable(path: str, ckpt: dict) -> None:
    """--resume: a checkpoint with a training state this imgclf can continue."""
    if "train_state" not in ckpt:
        raise CheckpointError(
            f"'{path}' holds no training state (best.pt does not): resume from last.pt or an epoch_N.pt"
        )
    if "step" not in ckpt["train_state"]:
        raise CheckpointError(
            f"'{path}' was written by an older imgclf whose training state this one cannot "
            "continue: start a new run (its best.pt still evaluates, predicts and exports)"
        )


def check_unfinished(cfg: TrainConfig, ckpt: dict) -> None:
    done = int(ckpt["train_state"]["epoch"])
    if done >= cfg.epochs and not ckpt.get("resume_auto"):  # --resume auto: a run not yet reported reports
        raise UsageError(
            f"'{cfg.resume}' already finished epoch {done} of {cfg.epochs}: pass --epochs N to train longer"
        )


def check_machine(cfg: TrainConfig, device, world) -> None:
    """What the device and the ranks allow (`world`: torchrun's, or the one --nproc is about to start)."""
    if cfg.curriculum != "none" and cfg.difficulty == "auto" and world.distributed and not cfg.resume:
        raise UsageError(
            "--difficulty auto runs its reference training in one process: under torchrun, train a reference "
            "model first, `imgclf score RUN/best.pt` it, and pass --difficulty RUN/difficulty.csv"
        )
    if not cfg.sync_bn:
        return
    if not world.distributed:
        log.info("--sync-bn: one process, so nothing to synchronise; BatchNorm runs as usual")
    elif device.type != "cuda":
        raise UsageError(
            "--sync-bn: PyTorch's SyncBatchNorm runs on GPUs only; on CPUs drop --sync-bn (each rank then "
            "normalises with its own batch, and DDP keeps rank 0's running statistics on every rank)"
        )
