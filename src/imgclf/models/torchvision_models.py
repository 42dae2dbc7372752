"""torchvision's ImageNet classifiers: ResNet-18 and -50, VGG-16, EfficientNet-B0.

Pretrained weights are torchvision's DEFAULT ones, from the torch hub cache, downloaded there when online.
"""

from __future__ import annotations

import os

from torch import nn
from torchvision.models import get_model, get_model_weights

from imgclf.models.registry import ModelSpec, Weights, register, replace_head


def _tv(arch: str, head: str):
    def build(num_classes: int) -> nn.Module:
        m = get_model(arch, weights=None)
        if num_classes != 1000:
            replace_head(m, head, num_classes)
        return m

    return build


def _tv_weights(arch: str) -> Weights:
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
