"""compute/memory.py: what there is, what a model takes per image (measured on the meta device), the check; and
models/activations.py's LeanReLU6, which keeps less for the backward pass with the same numbers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from imgclf.compute import memory
from imgclf.core.errors import UsageError
from imgclf.models.activations import LeanReLU6, lean_activations
from imgclf.models.registry import build_model


def test_available_memory_is_known_here_and_a_cgroup_limit_wins(monkeypatch):
    room, source = memory.available()
    assert room is not None and room > 0 and source == "available" or "cgroup" in source
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 123)
    assert memory.available() == (123, "left under this cgroup's memory limit")


def test_activations_per_image_are_what_autograd_keeps_and_the_inference_peak():
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    # training keeps the first conv's input (3x16x16 floats), the ReLU's output, which the second conv keeps too
    # (8x16x16, once): 11,264 bytes an image
    with torch.device("meta"):
        model = build()
    x = torch.zeros(2, 3, 16, 16, device="meta")
    assert memory._saved_bytes(model, x) == 2 * (3 + 8) * 16 * 16 * 4
    per = memory.activation_bytes(build, 16, channels_last=False)
    # inference: at most the input, the first conv's output and the ReLU's output live at once
    assert (8 + 8) * 16 * 16 * 4 <= per.infer <= (3 + 8 + 8) * 16 * 16 * 4
    # a training step: what is kept, times the backward pass's slack, and never less than inference
    assert per.train == max(int((3 + 8) * 16 * 16 * 4 * memory.TRAIN_SLACK), per.infer)
    # a frozen model keeps nothing for a backward pass: its training images cost what inference does
    frozen = memory.activation_bytes(lambda: build().requires_grad_(False), 16, channels_last=False)
    assert frozen.train == frozen.infer


def test_lite0_per_image_matches_a_measured_cpu_step():
    """EfficientNet-Lite0 at 224 px: a real CPU training step (fp32, channels_last, lean ReLU6, batch 16) grew
    resident memory by 77 MiB an image and inference (batch 64) by 10.8 (docs/benchmarks.md, "Memory")."""

    def build():
        m = build_model("efficientnet_lite0", 2, pretrained=False)
        lean_activations(m)
        return m

    per = memory.activation_bytes(build, 224)
    assert 70 * 2**20 < per.train < 100 * 2**20
    assert 9 * 2**20 < per.infer < 14 * 2**20


def test_check_refuses_warns_or_lets_pass(caplog):
    est = memory.Estimate("this run", {"activations of 8 images at 16 px": 3_000_000_000, "weights": 10_000_000})
    with pytest.raises(UsageError) as e:
        memory.check(est, 2_000_000_000, "available", lower="lower --batch-size")
    line = str(e.value)
    assert "\n" not in line and "3.0 GB" in line and "2.0 GB is available" in line
    assert "lower --batch-size" in line and "--no-memory-check" in line
    with caplog.at_level(logging.WARNING, "imgclf"):
        assert memory.check(est, 2_000_000_000, "available", lower="x", allow=True)  # overridden: a warning
        assert "starting anyway" in caplog.text
        caplog.clear()
        assert memory.check(est, 3_500_000_000, "available", lower="lower --batch-size")  # close: a warning
        assert "close to the limit" in caplog.text
        caplog.clear()
        assert memory.check(est, 10_000_000_000, "available", lower="x") is None and not caplog.text
    assert memory.check(est, None, "unknown", lower="x") is None  # nothing to compare with: nothing said
    est.ranks = 4
    assert est.total == 4 * 3_010_000_000 and est.describe().startswith("4 ranks x 3.0 GB: ")


def test_lean_relu6_gives_the_same_numbers_and_keeps_less():
    def net(lean: bool):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 1))
        if lean:
            assert lean_activations(m) == 1 and isinstance(m[2], LeanReLU6) and isinstance(m[2], nn.ReLU6)
        return m

    x = torch.randn(4, 3, 16, 16) * 4  # values on both sides of 0 and 6
    grads, outs = [], []
    for lean in (False, True):
        m = net(lean)
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad for p in m.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))  # bit for bit: hardtanh's own backward kernel
    x2 = torch.zeros(2, 3, 16, 16, device="meta")
    with torch.device("meta"):
        plain, lean = memory._saved_bytes(net(False), x2), memory._saved_bytes(net(True), x2)
    assert plain - lean == 2 * 8 * 16 * 16 * 4  # the BatchNorm output that ReLU6 no longer keeps
    assert net(True).state_dict().keys() == net(False).state_dict().keys()
    scripted = torch.jit.trace(net(True).eval(), x)  # traced, it is plain ReLU6
    assert torch.equal(scripted(x), net(False).eval()(x))
