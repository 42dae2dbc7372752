"""check --deep's near-duplicates (perceptual hash, embedding neighbours) and outliers, on synthetic data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import smooth_field
from PIL import Image, ImageEnhance

from imgclf.core.errors import DataError
from imgclf.data.phash import phash
from imgclf.studies.audit.neighbours import (
    COSINE,
    DISTINCT,
    HASH_BITS,
    Links,
    clusters,
    hash_links,
    l2_normalised,
    nearest,
    neighbour_findings,
    outlier_scores,
)


def _jpeg40(im):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=40)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop10(im):  # a tenth of the area cut off: 95% of the width and height, centred
    w, h = im.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    return im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


ALTERATIONS = {
    "jpeg40": _jpeg40,
    "resize80": lambda im: im.resize((round(im.width * 0.8), round(im.height * 0.8)), Image.Resampling.LANCZOS),
    "crop10": _crop10,
    "bright": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_tier_1_puts_an_altered_copy_in_val_with_its_original_and_leaves_other_pictures_alone(alteration):
    originals = [smooth_field(s, 128) for s in range(12)]
    others = [smooth_field(s, 128) for s in range(100, 112)]
    copies = [ALTERATIONS[alteration](im) for im in originals]
    hashes = [phash(im) for im in originals + copies + others]
    shown = [f"train/o{i}" for i in range(12)] + [f"val/c{i}" for i in range(12)] + [f"val/x{i}" for i in range(12)]
    splits = ["train"] * 12 + ["val"] * 24
    found = neighbour_findings(shown, splits, ["a"] * 36, None, hashes)
    assert sorted(f.paths for f in found) == sorted([f"train/o{i}", f"val/c{i}"] for i in range(12))
    assert {f.kind for f in found} == {"near-duplicate-across-splits"}
    assert all(f.group.startswith("nd-") and 0 <= f.score <= HASH_BITS / 64 for f in found)
    assert all("perceptual hash" in f.detail and "of 64 bits differ" in f.detail for f in found)


def test_a_cluster_inside_a_split_is_a_warning_and_across_splits_an_error_and_exact_copies_are_not_repeated():
    ims = [smooth_field(s, 128) for s in range(6)]
    hashes = [phash(im) for im in ims] + [phash(_jpeg40(ims[0])), phash(_jpeg40(ims[1])), phash(ims[2])]
    shown = [f"p{i}" for i in range(9)]
    splits = ["train"] * 6 + ["train", "val", "val"]
    digests = [bytes([i]) for i in range(8)] + [bytes([2])]  # p8 has p2's pixels: check reported it already
    found = {f.kind: f for f in neighbour_findings(shown, splits, ["a"] * 9, None, hashes, digests=digests)}
    assert set(found) == {"near-duplicate", "near-duplicate-across-splits"}
    assert found["near-duplicate"].paths == ["p0", "p6"] and "in train" in found["near-duplicate"].detail
    err = found["near-duplicate-across-splits"]
    assert err.paths == ["p1", "p7"] and "across train and val" in err.detail
    assert err.group == "nd-1" and found["near-duplicate"].group == "nd-2"  # the leaks come first


def test_tier_2_links_close_feature_vectors_and_names_the_tier():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 32))
    feats[50] = feats[3] * 2.0 + rng.normal(scale=0.05, size=32)  # another scale, the same direction: a copy
    feats[51] = feats[50] + rng.normal(scale=0.05, size=32)  # and a copy of the copy: one cluster of three
    splits = ["train"] * 50 + ["val"] * 10
    found = neighbour_findings([f"p{i}" for i in range(60)], splits, ["a"] * 60, feats, None, cosine=0.05)
    (nd,) = [f for f in found if f.kind.startswith("near-duplicate")]
    assert nd.kind == "near-duplicate-across-splits" and nd.paths == ["p3", "p50", "p51"]
    assert "embedding (closest: cosine distance" in nd.detail and nd.score < 0.05
    # unrelated random vectors in 32 dimensions are far apart: nothing else is linked
    assert not [
        f
        for f in neighbour_findings([f"p{i}" for i in range(50)], splits[:50], ["a"] * 50, feats[:50], None)
        if f.kind.startswith("near")
    ]


def test_tier_2_is_held_under_half_the_data_s_own_nearest_neighbour_distance():
    """Images all alike (every pair within the fixed cosine): distinct ones are not joined, a real copy still is."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=64) * 10
    feats = base + rng.normal(size=(80, 64))  # 80 distinct images around one point: cosine distances ~0.01
    feats[79] = feats[5] + rng.normal(scale=0.01, size=64)  # a copy, much closer than any two distinct images
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert (1 - x[:79] @ x[:79].T).max() < COSINE  # the fixed threshold alone would join them all
    found = neighbour_findings([f"p{i}" for i in range(80)], ["train"] * 80, ["a"] * 80, feats, None)
    assert [f.paths for f in found if f.kind.startswith("near")] == [["p5", "p79"]]


def _at_cosine(v: np.ndarray, d: float, rng) -> np.ndarray:
    """A vector at cosine distance `d` from `v`."""
    u = v / np.linalg.norm(v)
    w = rng.normal(size=v.shape)
    w -= (w @ u) * u
    w /= np.linalg.norm(w)
    return (1 - d) * u + np.sqrt(1 - (1 - d) ** 2) * w


def test_a_copy_past_the_cosine_threshold_is_linked_when_it_stands_out_and_look_alikes_are_not():
    """The ratio test: a crop's features sit past COSINE from its original but far nearer it than anything else;
    three photos merely alike (each as near the other two) are not copies."""
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(60, 32))
    feats[50] = _at_cosine(feats[7], 0.17, rng)  # a copy of p7, past the plain threshold
    c = feats[20] / np.linalg.norm(feats[20])  # p20, p51, p52: each at cosine distance 0.17 from the other two
    w = np.linalg.qr(np.column_stack([c, rng.normal(size=(32, 3))]))[0][:, 1:].T  # 3 directions, orthogonal to c
    feats[[20, 51, 52]] = np.sqrt(0.83) * c + np.sqrt(0.17) * w
    x = l2_normalised(feats)
    assert COSINE < 1 - x[50] @ x[7] < DISTINCT[0]
    splits, shown = ["train"] * 50 + ["val"] * 10, [f"p{i}" for i in range(60)]
    found = neighbour_findings(shown, splits, ["a"] * 60, feats, None, mads=1e9)
    assert [f.paths for f in found] == [["p7", "p50"]]
    assert not neighbour_findings(shown, splits, ["a"] * 60, feats, None, distinct=None, mads=1e9)


def test_a_far_point_is_ranked_first_and_flagged_as_the_only_outlier():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 4
    labels = [str(i % 3) for i in range(300)]
    feats = centres[[i % 3 for i in range(300)]] + rng.normal(size=(300, 16))
    feats[123] = rng.normal(size=16) * 4  # unlike every class
    dist, _ = nearest(l2_normalised(feats), 10)
    assert np.argmax(outlier_scores(dist)) == 123
    found = [
        f
        for f in neighbour_findings([f"p{i}" for i in range(300)], ["train"] * 300, labels, feats, None)
        if f.kind == "outlier"
    ]
    assert [f.paths for f in found] == [["p123"]]
    assert found[0].label == "0" and "nearest class" in found[0].detail and found[0].score > 0


def test_nearest_leaves_each_image_itself_out_even_behind_an_exact_copy():
    x = l2_normalised(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]))
    _, idx = nearest(x, 2)
    assert all(i not in row for i, row in enumerate(idx.tolist()))


def test_twenty_thousand_hashes_go_through_the_index():
    rng = np.random.default_rng(2)
    hashes = [int(h) for h in rng.integers(0, 2**63, size=20_000, dtype=np.int64)]
    hashes[19_999] = hashes[0] ^ 0b101  # one planted pair, 2 bits apart
    links = hash_links(hashes, HASH_BITS)
    pairs = set(zip(links.i.tolist(), links.j.tolist()))
    assert (0, 19_999) in pairs
    assert len(pairs) < 20  # random 64-bit hashes are almost never within 10 bits of each other
    assert [c.tolist() for c in clusters(20_000, links) if 19_999 in c] == [[0, 19_999]]


def test_no_hashes_and_no_features_find_nothing_and_misaligned_inputs_are_refused():
    assert neighbour_findings(["a", "b"], ["train", "val"], ["x", "y"], None, None) == []
    assert neighbour_findings(["a", "b"], ["train", "val"], ["x", "y"], None, [None, None]) == []
    with pytest.raises(DataError, match="hashes has 1 entries for 2 images"):
        neighbour_findings(["a", "b"], ["train", "val"], ["x", "y"], None, [1])
    assert not len(Links.join([]).i)


def test_small_images_are_held_to_the_tighter_hash_threshold():
    hashes = [0, 0b11111111]  # 8 bits apart: within HASH_BITS, beyond HASH_BITS_SMALL
    args = (["train/a", "val/b"], ["train", "val"], ["x", "x"], None, hashes)
    assert [f.paths for f in neighbour_findings(*args, sides=[256, 300])] == [["train/a", "val/b"]]
    assert neighbour_findings(*args, sides=[32, 300]) == []
    assert len(neighbour_findings(*args)) == 1  # sizes unknown: the photos' threshold
