"""Class balancing (data/balance.py): the imbalance ratio `imgclf check` reports, sklearn's balanced class weights,
weighted epochs on both feeds from the epoch's generator, and what `auto` picks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from imgclf.core.artifact import Preprocess
from imgclf.data import check as check_module
from imgclf.data.balance import NONE_BELOW, SAMPLER_FROM, choose_balance, class_weights, imbalance_ratio, sample_weights
from imgclf.data.feed import make_feed
from imgclf.data.sources import Split

LABELS = [0] * 12 + [1] * 4 + [2] * 2  # 6:2:1


def test_imbalance_ratio():
    assert imbalance_ratio(LABELS) == 6.0
    assert imbalance_ratio(["few"] * 2 + ["many"] * 11) == 5.5
    assert imbalance_ratio([3, 3]) == 1.0
    assert imbalance_ratio([]) is None
    assert imbalance_ratio([0, 0, 0, 1, 1, 1, 1]) == 1.33  # rounded to 2 decimals as check prints it


def test_check_reports_the_same_ratio():
    # one definition: `imgclf check` calls balance.imbalance_ratio
    assert check_module.imbalance_ratio is imbalance_ratio
    assert check_module.IMBALANCE_WARN_RATIO == SAMPLER_FROM


def test_class_weights_are_sklearns_balanced():
    w = class_weights(LABELS, 3)
    expect = compute_class_weight("balanced", classes=np.arange(3), y=np.array(LABELS))
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor(expect, dtype=torch.float32))
    torch.testing.assert_close(w, torch.tensor([0.5, 1.5, 3.0]))  # n / (classes x count) = 18 / (3 x count)


def test_a_class_without_images_weighs_one():
    w = class_weights([0, 0, 0, 2], 4)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 1.0, 2.0, 1.0]))  # classes 0 and 2: 4 / (2 x count)


def test_class_weights_refuse_labels_outside_the_classes():
    with pytest.raises(ValueError, match="0..2"):
        class_weights([0, 3], 3)
    with pytest.raises(ValueError, match="at least one"):
        class_weights([], 3)


def test_sample_weights_give_every_class_the_same_total():
    w = sample_weights(LABELS, 3)
    assert w.dtype == torch.float64 and len(w) == len(LABELS)
    y = torch.tensor(LABELS)
    totals = torch.stack([w[y == c].sum() for c in range(3)])
    torch.testing.assert_close(totals, torch.full((3,), 6.0, dtype=torch.float64))


@pytest.mark.parametrize(
    "counts, choice",
    [
        ([5, 5], "none"),
        ([149, 100], "none"),
        ([3, 2], "weights"),
        ([999, 100], "weights"),
        ([10, 1], "sampler"),
        ([50, 5, 2], "sampler"),
    ],
)
def test_auto_picks_from_the_imbalance_ratio(counts, choice):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    got, reason = choose_balance("auto", labels)
    assert got == choice
    assert reason.startswith("auto:") and str(imbalance_ratio(labels)) in reason
    assert NONE_BELOW == 1.5 and SAMPLER_FROM == 10.0  # the thresholds the docs and --help state


@pytest.mark.parametrize("mode", ["none", "weights", "sampler"])
def test_other_modes_are_taken_as_asked(mode):
    assert choose_balance(mode, [0] * 50 + [1])[0] == mode


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto"):
        choose_balance("oversample", LABELS)


def _feed(cache: str, batch_size: int = 6):
    rng = np.random.default_rng(0)
    split = Split("train", labels=list(LABELS), arrays=rng.integers(0, 256, (len(LABELS), 8, 8, 3), dtype=np.uint8))
    prep = Preprocess(img_size=8, resize=8, mean=[0.5] * 3, std=[0.25] * 3)
    feed, _ = make_feed(split, prep, cache=cache, workers=0, augment="none", batch_size=batch_size)
    return feed


def _epoch_labels(feed, seed: int, weights=None) -> list[int]:
    return [int(v) for _, y in feed.epoch(torch.Generator().manual_seed(seed), sampler_weights=weights) for v in y]


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_weighted_epochs_balance_the_classes_and_repeat_from_the_generator(cache):
    feed = _feed(cache)
    w = sample_weights(LABELS, 3)
    assert _epoch_labels(feed, 7, w) == _epoch_labels(feed, 7, w)
    seen = Counter()
    for seed in range(60):
        labels = _epoch_labels(feed, seed, w)
        assert len(labels) == len(LABELS)  # an epoch is as long as without balancing
        seen.update(labels)
    # 1080 draws, each class 1/3: 360 expected, sd 15.5; unbalanced, class 2 would get 120
    assert all(300 <= seen[c] <= 420 for c in range(3)), seen


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_without_weights_an_epoch_is_still_a_permutation(cache):
    assert sorted(_epoch_labels(_feed(cache), 3)) == sorted(LABELS)


def test_weights_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="5 sampling weights for 18 images"):
        list(_feed("memory").epoch(torch.Generator(), sampler_weights=torch.ones(5, dtype=torch.float64)))
    with pytest.raises(ValueError, match="5 sampling weights for 18 images"):
        _feed("none").epoch(torch.Generator(), sampler_weights=torch.ones(5, dtype=torch.float64))
