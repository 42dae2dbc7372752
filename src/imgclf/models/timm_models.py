"""Any timm model as `timm:NAME` (timm is an optional extra: `pip install -e ".[timm]"`).

A `ModelSpec` is made on first use from the model itself, built on the meta device (no memory, no
initialisation): preprocessing from its pretrained config (input size, mean, std, interpolation, and the resize
that its crop_pct implies), its classifier as the head, and stages for `--freeze N` from timm's own coarse
parameter groups (`group_matcher`: stem, then one group per stage). Pretrained weights come through timm's own
loading, from the Hugging Face cache (or timm's torch hub cache for the few models hosted by URL only); with
HF_HUB_OFFLINE=1 nothing is fetched, and a model that is not cached is one line that says what is missing.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch
from torch import nn

from imgclf.core.errors import UsageError, WeightsUnavailableError, did_you_mean, first_line
from imgclf.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, OnUse, register_on_use

log = logging.getLogger(__name__)

PREFIX = "timm:"
INSTALL = 'timm models need timm: pip install -e ".[timm]" (or pip install timm)'
# timm's Hugging Face repositories hold the weights under one of these names (timm/models/_hub.py), newest first.
HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
# exportable: timm's layer choices that trace and export (no custom autograd functions); the parameters are the same
BUILD_KWARGS = {"exportable": True}


def import_timm():
    try:
        import timm  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise UsageError(INSTALL) from None
    return timm


class TimmWeights:
    """Where a timm model's pretrained weights are cached. Duck-types registry.Weights for `list_models`
    (`path`, `available`, `package`); the loading itself is timm's (see `_pretrained_builder`)."""

    package = None

    def __init__(self, hf_hub_id: str | None, url: str | None):
        self.hf_hub_id, self.url = hf_hub_id, url

    def path(self) -> str:
        if self.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - optional: comes with timm
            from huggingface_hub.constants import HF_HUB_CACHE  # noqa: PLC0415 - optional: comes with timm

            for filename in HF_WEIGHTS_FILES:
                found = try_to_load_from_cache(self.hf_hub_id, filename)
                if isinstance(found, str):
                    return found
            return os.path.join(HF_HUB_CACHE, "models--" + self.hf_hub_id.replace("/", "--"))
        return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(self.url))

    def available(self) -> bool:
        return os.path.isfile(self.path())

    def describe(self) -> str:
        return f"Hugging Face repository {self.hf_hub_id}" if self.hf_hub_id else self.url


def _stages(model: nn.Module, head: str) -> list[tuple[str, list[str]]]:
    """timm's coarse groups, input first, without the head: [(name, [module or parameter names])].

    Models without a group matcher get one stage per child module."""
    from timm.models import group_parameters  # noqa: PLC0415 - an optional extra

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError):
        groups = {
            i: [n for n, _ in c.named_parameters(prefix=name)] for i, (name, c) in enumerate(model.named_children())
        }
    totals = _count_under(n for n, _ in model.named_parameters())
    kept = []
    for _, names in sorted(groups.items()):
        names = [n for n in names if not (n == head or n.startswith(head + "."))]
        if names:
            kept.append(_largest_modules(names, totals))
    return [
        (_stage_name(ps, [head] + [p for other in kept if other is not ps for p in other], first=i == 0), ps)
        for i, ps in enumerate(kept)
    ]


def _count_under(names) -> dict[str, int]:
    """module prefix -> how many of `names` (parameter names) lie under it."""
    counts: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        for k in range(1, len(parts)):
            pre = ".".join(parts[:k])
            counts[pre] = counts.get(pre, 0) + 1
    return counts


def _largest_modules(names: list[str], totals: dict[str, int]) -> list[str]:
    """The group's parameters as the largest modules that hold only parameters of the group ('layer1', not its
    convolutions one by one), so that `apply_frozen_eval` also stops the dropout and drop-path inside them;
    a parameter held by the model itself keeps its own name."""
    mine = _count_under(names)
    out = []
    for n in names:
        parts = n.split(".")
        starts = (".".join(parts[:k]) for k in range(1, len(parts)))
        out.append(next((pre for pre in starts if mine[pre] == totals[pre]), n))
    return list(dict.fromkeys(out))


def _stage_name(prefixes: list[str], others: list[str], *, first: bool) -> str:
    """'layer1', 'stages.0', 'blocks.4+conv_head+bn2': the shortest start of the stage's common dotted prefix
    that no other stage (nor the head) shares, else the shortest such start of each of its prefixes, joined."""

    def unique_start(parts: list[str]) -> str:
        for k in range(1, len(parts) + 1):
            start = ".".join(parts[:k])
            if not any(o == start or o.startswith(start + ".") for o in others):
                return start
        return ".".join(parts)

    parts = [p.split(".") for p in prefixes]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    if common:
        return unique_start(common)
    if first:
        return "stem"
    return "+".join(dict.fromkeys(unique_start(p) for p in parts))


def _pretrained_builder(arch: str, weights: TimmWeights):
    def build(num_classes: int) -> nn.Module:
        timm = import_timm()
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes, **BUILD_KWARGS)
        except (OSError, RuntimeError, ValueError) as e:  # huggingface_hub's errors are OSErrors
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
            raise WeightsUnavailableError(
                f"pretrained weights for {PREFIX}{arch} ({weights.describe()}) are not in the local cache and cannot "
                f"be downloaded{offline}: {type(e).__name__}: {first_line(e, 'no detail')}; run once online to cache them, "
                f"or pass --weights-file PATH with a state dict of {arch}"
            ) from None

    return build


def _check_name(arch: str) -> None:
    timm = import_timm()
    if not timm.is_model(arch):
        names = [PREFIX + n for n in timm.list_models()]
        raise UsageError(
            f"unknown timm model '{PREFIX}{arch}'{did_you_mean(PREFIX + arch, names)}; "
            "`imgclf models --timm PATTERN` lists them (PATTERN like 'resnet*')"
        )


@functools.cache
def timm_spec(name: str) -> ModelSpec:
    """The ModelSpec of `timm:ARCH` (ARCH may carry a pretrained tag, as in resnet18.a1_in1k)."""
    arch = name[len(PREFIX) :]
    _check_name(arch)
    timm = import_timm()
    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False)
    cfg = dict(probe.pretrained_cfg or {})
    classifier = cfg.get("classifier") or "head"
    head = classifier[0] if isinstance(classifier, (tuple, list)) else classifier  # distilled models: the main head
    img_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    # timm's eval transform: resize the shorter side to floor(size / crop_pct), then centre-crop `size`
    resize = math.floor(img_size / float(cfg.get("crop_pct") or 0.875))
    weights = TimmWeights(cfg.get("hf_hub_id"), cfg.get("url")) if (cfg.get("hf_hub_id") or cfg.get("url")) else None
    return ModelSpec(
        name,
        functools.partial(_build, arch),
        head,
        functools.partial(_stages, head=head),
        img_size=img_size,
        resize=resize,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
        weights=weights,
        pretrained_builder=_pretrained_builder(arch, weights) if weights else None,
        # a fixed input size (ViT's position embeddings) takes nothing else; otherwise ResNet's total stride
        min_img_size=img_size if cfg.get("fixed_input_size") else 32,
        description=f"timm {arch}" + (f" ({cfg['tag']})" if cfg.get("tag") else ""),
    )


def _build(arch: str, num_classes: int) -> nn.Module:
    return import_timm().create_model(arch, pretrained=False, num_classes=num_classes, **BUILD_KWARGS)


def list_timm(pattern: str) -> list[dict]:
    """timm models matching `pattern` (timm.list_models: '*' wildcards), with whether their default pretrained
    weights are in the local cache (a file lookup, no network)."""
    timm = import_timm()
    from timm.models import get_pretrained_cfg  # noqa: PLC0415 - an optional extra

    rows = []
    for arch in timm.list_models(pattern):
        cfg = get_pretrained_cfg(arch)
        hub, url = (getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)) if cfg else (None, None)
        weights = TimmWeights(hub, url) if (hub or url) else None
        rows.append(
            {
                "name": PREFIX + arch,
                "pretrained": "n/a" if weights is None else ("yes" if weights.available() else "not cached"),
                "weights_path": weights.path() if weights else None,
            }
        )
    return rows


def has_model(name: str) -> bool:
    """Whether timm has `timm:ARCH` (what `name in REGISTRY` answers); without timm, the install hint."""
    try:
        timm_spec(name)
    except UsageError as e:
        if str(e) == INSTALL:
            raise
        return False
    return True


register_on_use(
    OnUse(
        name="timm",
        prefix=PREFIX,
        spec=timm_spec,
        has=has_model,
        listing=list_timm,
        hint=f"`imgclf models --timm PATTERN` the timm models, as {PREFIX}NAME",
        example=f"{PREFIX}resnet18",
    )
)
