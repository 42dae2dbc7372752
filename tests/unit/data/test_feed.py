"""The fast path: decoded-image cache and whole-batch augmentation agree with the per-image path."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torchvision.transforms import v2

from imgclf.core.artifact import Preprocess
from imgclf.data.batches import BatchTransform, random_crop, random_flip, random_resized_crop
from imgclf.data.cache import cache_root, load_decoded
from imgclf.data.feed import make_feed
from imgclf.data.images import center_crop
from imgclf.data.sources import open_source


def _batch(n=6, h=12, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def test_normalisation_folded_equals_torchvision():
    x = _batch()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    ours = BatchTransform(size=12, mean=mean, std=std, kind="eval")(x)
    ref = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(x))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_center_crop_matches_torchvision():
    x = _batch(h=15, w=20)
    torch.testing.assert_close(center_crop(x, 9), v2.CenterCrop(9)(x))


def test_random_crop_windows_come_from_the_zero_padded_image_per_sample():
    x = _batch(n=64, h=8, w=8)
    g = torch.Generator().manual_seed(1)
    out = random_crop(x, 8, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        found = [
            (t, left)
            for t in range(5)
            for left in range(5)
            if torch.equal(padded[i, :, t : t + 8, left : left + 8], out[i])
        ]
        assert found, f"sample {i} is not a window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 5  # per-sample offsets, not one for the batch


def test_flip_is_per_sample_and_seeded():
    x = _batch(n=200)
    a = random_flip(x, torch.Generator().manual_seed(3))
    b = random_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[i], x[i].flip(2)) for i in range(len(x))]
    assert 60 < sum(flipped) < 140


def test_random_resized_crop_shapes_range_and_full_box_is_a_resize():
    x = _batch(n=8, h=20, w=30)
    out = random_resized_crop(x, 16, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 16, 16) and out.min() >= 0 and out.max() <= 255
    # scale 1 and the image's own aspect ratio: the whole image, resampled
    full = random_resized_crop(x, 20, (1.0, 1.0), (1.5, 1.5), torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x.float(), size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, ref, atol=1e-3, rtol=1e-4)


def test_brightness_and_contrast_change_images_per_sample():
    x = _batch(n=16)
    t = BatchTransform(size=12, mean=[0.5] * 3, std=[0.5] * 3, kind="small", pad=0, brightness=0.5, contrast=0.5)
    a, b = t(x, torch.Generator().manual_seed(0)), t(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    plain = BatchTransform(size=12, mean=[0.5] * 3, std=[0.5] * 3, kind="small", pad=0)(
        x, torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(a, plain)


def test_decoded_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", layout="split", classes=("a", "b"), n=6, size=16)
    src = open_source(str(root))
    d1 = load_decoded(src.splits["train"], 16, cache="disk", workers=1)
    assert not d1.hit and d1.images.shape == (12, 3, 16, 16)
    assert any(f.endswith(".u8") for f in os.listdir(cache_root()))
    d2 = load_decoded(open_source(str(root)).splits["train"], 16, cache="disk", workers=1)
    assert d2.hit and torch.equal(d1.images, d2.images)
    # change one file: a new key, decoded afresh
    p = src.splits["train"].paths[0]
    time.sleep(0.01)
    with open(p, "ab") as f:
        f.write(b"\0")
    os.utime(p)
    d3 = load_decoded(open_source(str(root)).splits["train"], 16, cache="disk", workers=1)
    assert not d3.hit


def test_decoded_cache_leaves_out_unreadable_files(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", layout="split", classes=("a", "b"), n=4, size=16)
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    for mode in ("disk", "disk", "memory"):  # build, then hit, then in memory
        d = load_decoded(open_source(str(root)).splits["train"], 16, cache=mode, workers=1)
        assert len(d.split) == len(d.images) == 8
        assert [os.path.basename(p) for p, _ in d.bad] == ["broken.jpg"]
        assert "broken.jpg" not in " ".join(d.split.paths)


@pytest.mark.kernels
def test_fast_and_per_image_paths_give_the_same_eval_batches(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", layout="split", classes=("a", "b", "c"), n=5, size=(20, 14))
    split = open_source(str(root)).splits["val"]
    prep = Preprocess(img_size=12, resize=14, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    fast, _ = make_feed(split, prep, cache="memory", workers=1, eval_batch_size=4)
    slow, _ = make_feed(split, prep, cache="none", workers=0, eval_batch_size=4)
    for (xa, ya), (xb, yb) in zip(fast.batches(), slow.batches()):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=1e-5)
    # chosen images, in the order given (the out-of-distribution bank's subsample): both paths, the same images
    every = torch.cat([x for x, _ in fast.batches()])
    for feed in (fast, slow):
        got = list(feed.batches(indices=[5, 0, 3, 4, 1]))
        assert [len(x) for x, _ in got] == [4, 1]
        torch.testing.assert_close(torch.cat([x for x, _ in got]), every[[5, 0, 3, 4, 1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_feature_cache_trains_the_head_of_the_whole_model(tmp_path, make_folder, precision):
    """With --freeze backbone the head trains on cached features; the checkpoint is the whole model, and
    evaluating it image by image gives exactly the validation metrics the run reported, whatever precision it
    trained in (bf16 is what `auto` picks on some CPUs: CI once failed on that)."""
    import imgclf
    from imgclf.models.checkpoint import load_checkpoint

    root = make_folder(tmp_path / "d", layout="split", classes=("a", "b", "c"), n=8, size=16)
    res = imgclf.train(
        data=str(root),
        model="test_tiny",
        freeze="backbone",
        epochs=3,
        batch_size=8,
        workers=0,
        out=str(tmp_path / "runs"),
        name="frozen",
        lr=0.1,
        precision=precision,
    )
    best = os.path.join(res["run_dir"], "best.pt")
    ck = load_checkpoint(best)
    first = imgclf.train(
        data=str(root),
        model="test_tiny",
        freeze="backbone",
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(tmp_path / "runs"),
        name="frozen1",
        lr=0.1,
        precision=precision,
    )
    ck1 = load_checkpoint(os.path.join(first["run_dir"], "last.pt"))
    # the backbone never moved; the head did
    for k, v in ck["state_dict"].items():
        if k.startswith("fc."):
            continue
        assert torch.equal(v, ck1["state_dict"][k]), k
    m = imgclf.evaluate(best, split="val", workers=0, plots=False)
    assert abs(m["accuracy"] - res["best"]["accuracy"]) < 1e-9
    assert abs(m["loss"] - res["best"]["loss"]) < 1e-4
    assert "frozen-feature cache" in open(os.path.join(res["run_dir"], "train.log")).read()


@pytest.mark.parametrize("h,w,size", [(15, 20, 9), (16, 16, 16), (12, 17, 10), (6, 9, 8), (5, 4, 8), (7, 30, 9)])
def test_one_center_crop_matches_torchvision_on_every_layout(h, w, size):
    """The one centre crop (per-image transforms, decoded cache, whole batches, the server's numpy decode
    threads) takes torchvision's CenterCrop window, and pads a smaller image with zeros as torchvision does."""
    import numpy as np

    x = _batch(n=2, h=h, w=w)
    ref = v2.CenterCrop(size)(x)
    torch.testing.assert_close(center_crop(x, size), ref, atol=0, rtol=0)  # N x C x H x W
    torch.testing.assert_close(center_crop(x[0], size), ref[0], atol=0, rtol=0)  # C x H x W
    hwc = x[0].permute(1, 2, 0).numpy()
    got = center_crop(hwc, size, channels_last=True)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, ref[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("mode", ["bicubic", "nearest", "bilinear"])
def test_preprocess_interpolation_is_the_resampling_used(tmp_path, mode):
    """Preprocess.interpolation, saved in every checkpoint, is what resizes the image: on load (files and
    in-memory arrays), hence the decoded cache, per-image transforms and predict, and the server's decode."""

    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as TF

    from imgclf.data.pipeline import decode_one
    from imgclf.data.sources import Split
    from imgclf.serve.decode import decode_upload

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    prep = Preprocess(img_size=16, resize=20, mean=[0.5] * 3, std=[0.5] * 3, interpolation=mode)
    ref = torch.from_numpy(np.array(TF.resize(Image.fromarray(a), 20, interpolation=TF.InterpolationMode(mode))))
    ref = ref.permute(2, 0, 1)  # 3 x 20 x 30
    for split in (Split("s", [0], arrays=a[None]), Split("s", [0], paths=[str(tmp_path / "x.png")])):
        torch.testing.assert_close(decode_one(split, 0, prep.resize, prep.interpolation), ref, atol=0, rtol=0)
    with open(tmp_path / "x.png", "rb") as f:
        served = decode_upload(f.read(), prep, max_pixels=10**6)
    # the server decodes without torch: a NumPy H x W x 3 uint8 array
    torch.testing.assert_close(torch.from_numpy(served), v2.CenterCrop(16)(ref).permute(1, 2, 0), atol=0, rtol=0)
    if mode != "bilinear":  # the choice matters: bilinear would give other pixels
        bilinear = decode_one(Split("s", [0], arrays=a[None]), 0, 20)
        assert not torch.equal(bilinear, ref)


def test_preprocess_interpolation_reaches_the_feeds(tmp_path, make_folder):
    """Both feeds (decoded cache and per-image) resize with the checkpoint's interpolation, and the disk cache
    of one interpolation is never read for another."""
    root = make_folder(tmp_path / "d", layout="split", classes=("a", "b"), n=4, size=(24, 30))
    src = open_source(str(root))
    images = {}
    for mode in ("bilinear", "bicubic"):
        prep = Preprocess(img_size=16, resize=16, mean=[0.5] * 3, std=[0.5] * 3, interpolation=mode)
        fast, _ = make_feed(src.splits["train"], prep, cache="disk", workers=1)
        slow, _ = make_feed(src.splits["train"], prep, cache="none", workers=0)
        images[mode] = fast.image(0)
        torch.testing.assert_close(images[mode], center_crop(slow.image(0), 16), atol=0, rtol=0)
    assert not torch.equal(images["bilinear"], images["bicubic"])


def test_preprocess_refuses_an_unknown_interpolation():
    from imgclf.core.errors import CheckpointError

    with pytest.raises(ValueError, match="lanczos"):
        Preprocess(img_size=8, resize=8, mean=[0.5] * 3, std=[0.5] * 3, interpolation="lanczos")
    with pytest.raises(CheckpointError, match="not one of nearest, bilinear, bicubic"):
        Preprocess.from_dict({"img_size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "x"})
    old = Preprocess.from_dict({"img_size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert old.interpolation == "bilinear"  # checkpoints from before it was saved
