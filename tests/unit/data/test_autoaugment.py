"""RandAugment / TrivialAugmentWide (data/autoaugment.py): one draw per image on the fast path's uint8 batches,
from the epoch's generator; the per-image path (`--cache none`) applies the same policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from imgclf.core.artifact import Preprocess
from imgclf.data.autoaugment import BatchPolicy, policy
from imgclf.data.batches import BatchTransform
from imgclf.data.feed import FastFeed, LoaderFeed, make_feed
from imgclf.data.pipeline import train_transform
from imgclf.data.sources import Split

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _images(n=16, size=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_each_image_gets_its_own_draw(name):
    # 32 copies of one image: torchvision on the batch gives 32 identical results, one draw per image does not
    x = _images(1).expand(32, -1, -1, -1).contiguous()
    out = BatchPolicy(name)(x, _gen(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 8


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_same_generator_state_same_batch_and_the_global_generator_untouched(name):
    x, bp = _images(), BatchPolicy(name)
    before = torch.get_rng_state()
    a = bp(x, _gen(4))
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(7)  # draws on the global generator in between change nothing
    assert torch.equal(a, bp(x, _gen(4)))
    assert not torch.equal(a, bp(x, _gen(5)))


def test_policy_names():
    assert policy("none") is None
    assert isinstance(policy("randaugment"), v2.RandAugment) and isinstance(
        policy("trivialaugment"), v2.TrivialAugmentWide
    )
    with pytest.raises(ValueError, match="randaugment"):
        policy("autoaugment")
    with pytest.raises(TypeError, match="uint8"):
        BatchPolicy("randaugment")(_images().float(), _gen(0))


@pytest.mark.parametrize("kind", ["small", "shift", "large", "none"])
def test_batch_transform_applies_the_policy_after_the_crop(kind):
    x = _images()
    plain = BatchTransform(size=16, mean=MEAN, std=STD, kind=kind)
    aa = BatchTransform(size=16, mean=MEAN, std=STD, kind=kind, randaugment="trivialaugment")
    a, b = aa(x, _gen(1)), aa(x, _gen(1))
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, plain(x, _gen(1)))
    # what comes out is still an image normalised with MEAN and STD: 0..255 maps into [-2, 2]
    assert a.min() >= -2 - 1e-5 and a.max() <= 2 + 1e-5


def test_eval_transform_has_no_policy():
    x = _images()
    torch.testing.assert_close(
        BatchTransform(size=16, mean=MEAN, std=STD, kind="eval")(x),
        BatchTransform(size=16, mean=MEAN, std=STD, kind="eval")(x, _gen(0)),
    )


@pytest.mark.parametrize("augment", ["small", "large", "none"])
def test_per_image_path_applies_the_policy(augment):
    prep = Preprocess(img_size=16, resize=16, mean=MEAN, std=STD)
    tf = train_transform(prep, augment, randaugment="randaugment")
    assert sum(isinstance(t, v2.RandAugment) for t in tf.transforms) == 1
    assert tf(_images(1)[0]).shape == (3, 16, 16)
    assert not any(isinstance(t, v2.RandAugment) for t in train_transform(prep, augment).transforms)


@pytest.mark.parametrize("cache, kind", [("memory", FastFeed), ("none", LoaderFeed)])
def test_make_feed_passes_the_policy_on(cache, kind):
    rng = np.random.default_rng(0)
    split = Split("train", labels=[0, 1] * 4, arrays=rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8))
    prep = Preprocess(img_size=16, resize=24, mean=MEAN, std=STD)
    feed, bad = make_feed(
        split, prep, cache=cache, workers=0, augment="large", batch_size=4, randaugment="trivialaugment"
    )
    assert isinstance(feed, kind) and not bad
    if cache == "memory":
        assert feed.train_tf.policy.name == "trivialaugment"
    else:
        assert any(isinstance(t, v2.TrivialAugmentWide) for t in feed.train_ds.transform.transforms)
    x, y = next(iter(feed.epoch(_gen(0))))
    assert x.shape == (4, 3, 16, 16)
