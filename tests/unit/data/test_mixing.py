"""Mixup and CutMix on a batch (data/mixing.py): reproducible from the generator passed in, timm's prob and
switch_prob, soft targets that nn.CrossEntropyLoss takes, any memory format."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from imgclf.data.mixing import Mixer, make_mixer
from imgclf.training.options import make_config

N, C = 8, 8  # classes 0..7 in order, so that image i's own class and its partner's (i - 1) are both visible


def _batch(seed: int = 0, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, 12, 10, generator=g)  # normalised floats, not square: H and W not mixed up
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.arange(N)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_cutmix(x, out) -> bool:
    # every pixel comes whole from the image itself or its neighbour (mixup blends them)
    return bool(((out == x) | (out == x.roll(1, 0))).all())


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_same_generator_state_same_output(mixup, cutmix):
    x, y = _batch()
    mixer = Mixer(C, mixup, cutmix, prob=0.7, switch_prob=0.5)
    g1, g2 = _gen(3), _gen(3)
    for _ in range(6):  # several batches from one generator: the whole sequence repeats
        torch.rand(5)  # draws on the global generator in between change nothing
        a, b = mixer(x, y, g1), mixer(x, y, g2)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(g1.get_state(), g2.get_state())
    outs = [mixer(x, y, _gen(s))[1] for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), "the generator's state does not reach the mixing"


def test_the_global_generator_is_left_as_it_was():
    x, y = _batch()
    before = torch.get_rng_state()
    Mixer(C, 0.4, 1.0)(x, y, _gen(0))
    assert torch.equal(torch.get_rng_state(), before)


def test_mixup_blends_each_image_with_its_neighbour():
    x, y = _batch()
    out, t = Mixer(C, mixup_alpha=0.4)(x, y, _gen(1))
    lam = float(t[0, 0])
    assert 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    expect = lam * F.one_hot(y, C) + (1 - lam) * F.one_hot(y.roll(1, 0), C)
    assert torch.allclose(t, expect.float(), atol=1e-6)


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    x, y = _batch()
    for seed in range(5):
        out, t = Mixer(C, cutmix_alpha=1.0)(x, y, _gen(seed))
        assert _is_cutmix(x, out)
        pasted = (out != x).all(dim=1).float().mean(dim=(1, 2))  # fraction of pixels from the neighbour, per image
        assert torch.allclose(t[torch.arange(N), y.roll(1, 0)], pasted, atol=1e-6)
        assert torch.allclose(t.sum(1), torch.ones(N))


def test_prob_is_the_chance_a_batch_is_mixed():
    x, y = _batch()
    out, t = Mixer(C, 0.4, 1.0, prob=0.0)(x, y, _gen(0))
    assert torch.equal(out, x) and torch.equal(t, F.one_hot(y, C).float())
    g = _gen(0)
    mixed = sum(not torch.equal(Mixer(C, 0.4, prob=0.3)(x, y, g)[0], x) for _ in range(400))
    assert 80 <= mixed <= 160  # 120 expected; binomial sd 9.2, so these bounds are 4.3 sd away


@pytest.mark.parametrize("switch_prob, cutmix_share", [(0.0, (0, 0)), (1.0, (400, 400)), (0.25, (60, 140))])
def test_switch_prob_is_the_chance_of_cutmix_when_both_are_on(switch_prob, cutmix_share):
    x, y = _batch()
    mixer, g = Mixer(C, 0.4, 1.0, prob=1.0, switch_prob=switch_prob), _gen(0)
    cut = sum(_is_cutmix(x, mixer(x, y, g)[0]) for _ in range(400))
    assert cutmix_share[0] <= cut <= cutmix_share[1]  # 0.25: 100 expected, sd 8.7


def test_channels_last_stays_channels_last():
    x, y = _batch(channels_last=True)
    for mixer in (Mixer(C, mixup_alpha=0.4), Mixer(C, cutmix_alpha=1.0)):
        out, _ = mixer(x, y, _gen(0))
        assert out.is_contiguous(memory_format=torch.channels_last)
        ref, _ = mixer(x.contiguous(), y, _gen(0))
        assert torch.equal(out, ref)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_of_one_hot_targets_is_that_of_the_labels(smoothing):
    logits = torch.randn(N, C, generator=_gen(5))
    x, y = _batch()
    _, t = Mixer(C, 0.4, prob=0.0)(x, y, _gen(0))  # not mixed: one-hot
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    assert torch.allclose(loss(logits, t), loss(logits, y), atol=1e-6)
    _, mixed = Mixer(C, 0.4)(x, y, _gen(0))
    assert torch.isfinite(loss(logits, mixed))  # probability targets are accepted as they come


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one of them above 0"):
        Mixer(C, 0.0, 0.0)
    with pytest.raises(ValueError, match="prob"):
        Mixer(C, 0.4, prob=1.5)
    with pytest.raises(ValueError, match="switch_prob"):
        Mixer(C, 0.4, 1.0, switch_prob=-0.1)


def test_make_mixer_from_the_config():
    assert make_mixer(make_config({}), C) is None
    m = make_mixer(make_config({"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5, "mix_switch_prob": 0.3}), C)
    assert (m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob) == (0.2, 1.0, 0.5, 0.3)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_multi_hot_targets_mix_as_the_same_convex_combination(mixup, cutmix):
    """Multi-label: each image's targets become lam x its own + (1 - lam) x its neighbour's, in [0, 1]; a label both
    hold stays 1; an unmixed batch keeps its multi-hot targets."""
    x, _ = _batch()
    y = (torch.rand(N, 3, generator=_gen(5)) < 0.5).float()
    y[0] = y[N - 1] = 1.0  # image 0 and its neighbour (N - 1) hold every label
    mixed, t = Mixer(3, mixup, cutmix)(x, y, _gen(1))
    assert t.dtype == torch.float32 and t.shape == y.shape and ((t >= 0) & (t <= 1)).all()
    assert torch.equal(t[0], torch.ones(3))
    own = float((mixed[1] - x[0]).abs().sum() > 0)  # something of image 0 was mixed into image 1
    lam = next(float(t[i, k]) for i in range(N) for k in range(3) if y[i, k] == 1 and y[i - 1, k] == 0)
    assert 0 < lam < 1 and own
    assert torch.allclose(t, lam * y + (1 - lam) * y.roll(1, 0), atol=1e-6)
    _, kept = Mixer(3, mixup, cutmix, prob=0.0)(x, y, _gen(1))
    assert torch.equal(kept, y)
    with pytest.raises(ValueError, match="3 columns"):
        Mixer(3, mixup, cutmix)(x, y[:, :2], _gen(1))
