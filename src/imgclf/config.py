"""Every training option in one place: a type, a default and a line of help each.

The CLI's `train` flags are generated from this dataclass; `--config run.yaml` (read with yaml.safe_load)
sets the same keys; flags given on the command line win over the file. An unset option (`None`) means
"the model's or the data's own default", resolved once at the start of a run and written to config.yaml.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields

import yaml

from .errors import UsageError, did_you_mean
from .fileio import atomic_open


def opt(default, help: str, choices: tuple | None = None, flag: str | None = None):
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class TrainConfig:
    recipe: str = opt("none", "a preset of the options below that you do not set yourself: fast (airnet, airbench94-style optimisation, for 32 px images from scratch; pair with --time-budget) or none", ("none", "fast"))
    # data
    data: str | None = opt(None, "folder of class folders (with or without train/val/test), a CSV of path,label[,split], or cifar10, cifar100, digits")
    data_root: str | None = opt(None, "where cifar10/cifar100 are kept or downloaded (default: $IMGCLF_DATA or ~/.cache/imgclf/data)")
    val_fraction: float = opt(0.2, "fraction of train held out for validation when the data has no val split (stratified, seeded)")
    # model
    model: str = opt("resnet18", "model name; `imgclf models` lists them")
    pretrained: bool = opt(False, "start from ImageNet weights (the head is replaced for the data's classes)")
    freeze: str = opt("none", "backbone (only the new head trains), none (all layers train), or N (the first N stages frozen)")
    img_size: int | None = opt(None, "input size in pixels (default: the model's pretrained size with --pretrained, else the data's own size when all images share one, else 224)")
    augment: str = opt("auto", "training augmentation: small (flip + zero-padded random crop), shift (flip + reflect-padded shift of up to 2 px), large (random resized crop + flip), none, or auto (small up to 64 px)", ("auto", "small", "shift", "large", "none"))
    brightness: float = opt(0.0, "random brightness change per image, as a fraction (0: off)")
    contrast: float = opt(0.0, "random contrast change per image, as a fraction (0: off)")
    # optimisation
    epochs: int = opt(30, "number of epochs")
    batch_size: int = opt(128, "images per training batch")
    optimizer: str = opt("sgd", "sgd or adamw", ("sgd", "adamw"))
    lr: float | None = opt(None, "learning rate (default: 0.01 for sgd, 0.001 for adamw)")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "SGD with Nesterov momentum")
    weight_decay: float | None = opt(None, "weight decay (default: 5e-4 for sgd, 0.05 for adamw)")
    scheduler: str = opt("step", "learning-rate schedule: step, cosine, warmup-linear (per step: 0.2x -> 1x over the first 23%% of steps, then down to 0.07x, as airbench) or none", ("step", "cosine", "warmup-linear", "none"))
    step_size: int = opt(10, "step schedule: epochs between decays")
    gamma: float = opt(0.5, "step schedule: factor per decay")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    bias_lr_scale: float = opt(1.0, "learning-rate multiplier for BatchNorm biases (their weight decay is divided by it, so the decay per step stays the same)")
    lookahead: bool = opt(False, "lookahead on the weights (airbench): every 5 steps, an average of the weights whose decay rises to 0.77 is copied back into the model; the final model is that average")
    time_budget: float | None = opt(None, "minutes of training (the epoch loop, validation included): the schedule is shortened to end within them, from the speed of the first steps; never longer than --epochs")
    max_steps: int | None = opt(None, "optimisation steps in all (the schedule ends there); set from --time-budget when that is given")
    precision: str = opt("auto", "auto (the fastest on this machine, never slower than fp32: bf16 or fp16 autocast on CUDA; on a CPU with native bf16 a short probe of the model decides, cached per machine and model - see `imgclf env`; else fp32), fp32, bf16 or fp16", ("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = opt(True, "channels_last memory layout for the model and batches (faster convolutions on CPU and GPU)")
    feature_cache: bool = opt(True, "with --freeze backbone: compute the frozen backbone's features once (plus --feature-views augmented views) and train the head on them")
    feature_views: int = opt(2, "augmented views per training image in the frozen-feature cache, besides the plain one")
    # machinery
    device: str = opt("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    workers: int | None = opt(None, "data-loading worker processes (default: the number of CPU cores, at most 4)")
    cache: str = opt("auto", "decoded images: auto/disk (decoded once into a memory-mapped file, reused by later runs), memory, or none (decode every image every epoch, per-image transforms)", ("auto", "disk", "memory", "none"))
    seed: int = opt(0, "random seed for the split, initialisation, order and augmentation")
    # outputs
    out: str = opt("runs", "folder that holds run directories")
    name: str | None = opt(None, "run directory name (default: MODEL-DATA, numbered if taken)")
    save_every: int = opt(5, "also keep epoch_N.pt every N epochs (0: never)")
    resume: str | None = opt(None, "continue a run from its last.pt (or any epoch checkpoint)")
    log_every: int = opt(50, "when stderr is not a terminal, a progress line every N training steps")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}


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
        raise UsageError(f"{source}: '{key}' must be {t.__name__}, not {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{source}: '{key}' must be one of {', '.join(choices)}, not '{value}'{did_you_mean(str(value), choices)}")
    return value


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"config file '{path}' not found: pass the path of a YAML file with training options")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file '{path}' must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in raw.items()}


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


def save_yaml(data: dict, path: str) -> None:
    with atomic_open(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)


