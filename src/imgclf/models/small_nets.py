"""Small networks trained from scratch on small images: `smallcnn`, and `test_tiny` for tests (the tiny model
every unit test trains; timm keeps its `test_*` models for the same reason). No pretrained weights."""

from __future__ import annotations

from torch import nn

from imgclf.models.registry import ModelSpec, register


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
