"""Perceptual hashes in check's decode pass (off unless asked), inspect_data against check_data, and the named
data sets check takes (digits here; cifar10/cifar100 are read the same way)."""

from __future__ import annotations

import json

import numpy as np
from conftest import smooth_field
from PIL import Image

from imgclf.cli.main import main
from imgclf.data import decode_pass
from imgclf.data.check import check_data, inspect_data, report_of
from imgclf.data.phash import BITS, hamming, hash_bytes, phash, phash_array


def _folder(root):
    for split, seeds in (("train", (1, 2, 3)), ("val", (4, 5))):
        for s in seeds:
            d = root / split / ("a" if s % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            smooth_field(s).save(d / f"{s}.png")
    return root


def test_phash_is_off_by_default_and_on_when_asked(tmp_path):
    data = _folder(tmp_path / "d")
    assert inspect_data(str(data)).hashes == [None] * 5
    on = inspect_data(str(data), phash=True, workers=1)
    assert all(isinstance(h, int) and 0 <= h < 2**BITS for h in on.hashes)
    assert len(set(on.hashes)) == 5  # five different pictures, five different hashes
    # the hash computed in the decode pass is imagehash's phash of the decoded image
    assert on.hashes[0] == phash(Image.open(on.items[0].path).convert("RGB"))


def test_phash_stays_close_for_a_copy_and_far_for_another_picture():
    a, b = smooth_field(7), smooth_field(8)
    half = a.resize((48, 48), Image.Resampling.LANCZOS)
    assert hamming(phash(a), phash(half)) <= 4
    assert hamming(phash(a), phash(b)) > 16
    assert phash_array(np.asarray(a)) == phash(a)


def test_hash_bytes_keeps_the_bits_in_order():
    rows = hash_bytes([1, 2**63, 0])
    assert rows.shape == (3, 8) and rows.dtype == np.uint8
    assert rows[0].tolist() == [0] * 7 + [1] and rows[1].tolist() == [128] + [0] * 7


def test_inspect_data_and_check_data_agree(tmp_path):
    data = _folder(tmp_path / "d")
    smooth_field(1).save(data / "val" / "a" / "copy_of_1.png")  # an exact duplicate across splits: an error
    (data / "val" / "a" / "notes.txt").write_text("x")  # a listing warning
    ins = inspect_data(str(data), phash=True)
    assert ins.readable == [True] * 6
    assert len({d for d in ins.digests}) == 5  # the copy has its original's pixel digest
    one, two = report_of(ins).to_dict(), check_data(str(data)).to_dict()
    one["summary"].pop("seconds"), two["summary"].pop("seconds")
    assert one == two
    assert [f["kind"] for f in one["errors"]] == ["leak-across-splits"]
    assert report_of(ins).to_dict()["warnings"] == one["warnings"]  # a second report adds nothing to the listing


def test_an_array_is_digested_and_hashed_as_the_same_pixels_in_a_file(tmp_path):
    pixels = np.asarray(smooth_field(3))
    Image.fromarray(pixels).save(tmp_path / "x.png")
    status, from_file = decode_pass.inspect_file(str(tmp_path / "x.png"), 10**8, True)
    _, from_array = decode_pass.inspect_array(pixels, True)
    assert status == "ok"
    assert (from_array.digest, from_array.phash) == (from_file.digest, from_file.phash)
    assert (from_array.width, from_array.height) == (96, 96)


def test_check_takes_digits_by_name(capsys):
    report = check_data("digits")
    s = report.summary
    assert (s["layout"], s["images"], s["readable"], list(s["classes_per_split"])) == ("dataset", 1797, 1797, ["train"])
    assert report.data == "digits"
    ins = inspect_data("digits")
    assert ins.items[17].shown == "digits:17" and ins.items[17].array.shape == (8, 8, 3)
    assert main(["check", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "digits" and out["summary"]["images"] == 1797
