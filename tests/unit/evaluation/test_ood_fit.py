"""The out-of-distribution fit (evaluation/ood_fit.py): the bank (a seeded subsample, computed in chunks, unreadable
images left out and counted), the thresholds for an acceptance, and `imgclf calibrate` fitting them again with its
new temperature (a checkpoint from before has none and gets one)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import usage_error

from imgclf.core import ood
from imgclf.core.errors import UsageError
from imgclf.data.feed import make_feed
from imgclf.evaluation.calibration import calibrate
from imgclf.evaluation.ood_fit import bank_features, bank_indices, fit_ood, fitting_runner, split_scores
from imgclf.infer.logits import open_model_data
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, ood_of, save_checkpoint


def feeds_of(runner):
    """The train and val feeds of the data `runner`'s checkpoint was trained on (decoded in memory)."""
    src, _ = open_model_data(runner.config, None, "val")
    return [
        make_feed(src.splits[s], runner.preprocess, cache="memory", workers=1, eval_batch_size=16)[0]
        for s in ("train", "val")
    ]


def old_copy(weights, folder) -> str:
    """A copy of `weights` without its out-of-distribution entry: a checkpoint written before there was one."""
    ckpt = load_checkpoint(weights)
    ckpt.pop("ood", None)
    path = str(folder / "old.pt")
    save_checkpoint(ckpt, path)
    return path


def assert_fit_rule(scores: dict, record: dict) -> None:
    """Each threshold accepts (score <= threshold) at least `accept` of `scores`, and no more of them than that needs."""
    assert set(record["thresholds"]) == set(scores)
    for name, t in record["thresholds"].items():
        s = scores[name]
        assert np.mean(s <= t) >= record["accept"] and np.mean(s < s[s <= t].max()) < record["accept"], name


def test_calibrate_gives_an_old_checkpoint_a_record_fitted_with_its_new_temperature(tiny_best, tmp_path):
    path = old_copy(tiny_best, tmp_path)
    r = calibrate(path, device="cpu", workers=0)
    ckpt = load_checkpoint(path)
    record, bank = ood_of(ckpt)
    runner = open_model(path, device="cpu", precision="fp32")
    assert record["temperature"] == ckpt["temperature"] == runner.temperature == r.temperature != 1.0
    assert r.to_dict()["ood"] == record and runner.ood == record and record["by"] == "calibrate"
    assert record["bank_size"] == len(bank) == 48 == record["train_images"] and record["k"] == 1
    assert bank.dtype == torch.float16 and torch.allclose(bank.float().norm(dim=1), torch.ones(48), atol=1e-2)
    # the thresholds fit the scores the calibrated runner gives (its temperature in, knn against the stored bank)
    _, val = feeds_of(runner)
    scores = split_scores(runner, val.batches(), bank, record["k"])
    assert_fit_rule(scores, record)
    given = [runner.ood_scores(x)[1] for x, _ in val.batches()]  # what predict --reject ood computes
    for name in ood.SCORES:
        assert np.allclose(np.concatenate([g[name] for g in given]), scores[name], atol=1e-5), name

    # --ood-bank 0: no bank, no knn; calibrating again without the options keeps what the record was fitted for
    for bank_asked in (0, None):
        calibrate(path, device="cpu", workers=0, ood_bank=bank_asked, ood_accept=0.8 if bank_asked == 0 else None)
        record, bank = ood_of(load_checkpoint(path))
        assert bank is None and record["k"] is None and record["bank_size"] == 0 == record["bank_asked"]
        assert set(record["thresholds"]) == {"msp", "energy"} and record["accept"] == 0.8


def test_calibrate_refits_a_multilabel_model_with_its_temperature_per_label(multilabel_ckpt, tmp_path):
    path = str(tmp_path / "ml.pt")
    shutil.copy(multilabel_ckpt, path)  # made without the trainer: no ood entry
    r = calibrate(path, device="cpu", workers=0)
    ckpt = load_checkpoint(path)
    record, bank = ood_of(ckpt)
    runner = open_model(path, device="cpu", precision="fp32")
    assert isinstance(record["temperature"], list) and record["temperature"] == ckpt["temperature"] == r.temperature
    assert runner.temperature == record["temperature"] and set(record["thresholds"]) == set(ood.SCORES)
    _, val = feeds_of(runner)
    assert_fit_rule(split_scores(runner, val.batches(), bank, record["k"]), record)


def test_the_bank_is_a_seeded_subsample_computed_in_chunks(tiny_best):
    idx = bank_indices(100, 10, seed=3)
    assert len(set(idx)) == 10 and list(idx) == sorted(idx) and list(idx) == list(bank_indices(100, 10, seed=3))
    assert list(idx) != list(bank_indices(100, 10, seed=4)) and list(bank_indices(7, 10, 0)) == list(range(7))
    runner = fitting_runner(tiny_best, load_checkpoint(tiny_best), device="cpu")
    train, val = feeds_of(runner)
    entry = fit_ood(runner, train, val, bank_size=5, accept=0.9, seed=3)
    record = entry["record"]
    assert record["bank_size"] == 5 == len(entry["bank"]) and record["train_images"] == 48 and record["seed"] == 3
    # the same images' features, one batch at a time and two images at a time
    chosen = bank_indices(48, 5, seed=3)
    assert torch.equal(entry["bank"], bank_features(runner, train, chosen, chunk=2))
    assert entry["bank"].shape[1] == runner.features(next(iter(val.batches()))[0]).shape[1]


def test_unreadable_training_images_are_left_out_of_the_bank_and_counted(tiny_best, tiny_data, tmp_path, caplog):
    data = tmp_path / "pets"
    shutil.copytree(tiny_data, data)
    first = sorted((data / "train" / "cat").iterdir())[0]
    broken = first.rename(first.with_name("evil\x1b[2J.png"))  # a name that would clear the terminal
    broken.write_bytes(b"not an image")
    path = old_copy(tiny_best, tmp_path)
    with caplog.at_level("WARNING", logger="imgclf"):
        calibrate(path, str(data), device="cpu", workers=0)
    record, bank = ood_of(load_checkpoint(path))
    assert record["train_images"] == 48 and record["left_out"] == 1 and record["bank_size"] == 47 == len(bank)
    said = [r.getMessage() for r in caplog.records if "left out of the kNN bank" in r.getMessage()]
    assert len(said) == 1 and "evil\\x1b[2J.png" in said[0] and "\x1b" not in said[0], said


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is an optional extra")
def test_a_timm_model_is_fitted_as_any_other(family_checkpoint):
    weights = family_checkpoint("timm:test_resnet")
    runner = fitting_runner(weights, load_checkpoint(weights), device="cpu")
    train, val = feeds_of(runner)
    entry = fit_ood(runner, train, val)
    assert set(entry["record"]["thresholds"]) == set(ood.SCORES) and len(entry["bank"]) == len(train) == 12
    assert_fit_rule(split_scores(runner, val.batches(), entry["bank"], entry["record"]["k"]), entry["record"])


def test_bad_fit_options_are_one_line_before_any_work(tiny_best, tmp_path, capsys):
    path = old_copy(tiny_best, tmp_path)
    for bad in ({"ood_accept": 1.0}, {"ood_accept": 0.5}, {"ood_bank": -1}, {"ood_bank": 2.5}):
        with pytest.raises(UsageError, match="^--ood-"):
            calibrate(path, device="cpu", workers=0, **bad)
    assert "ood" not in load_checkpoint(path)  # nothing written
    line = usage_error(capsys, ["calibrate", path, "--ood-accept", "0.4"])
    assert line.startswith("imgclf calibrate: error: argument --ood-accept: must be above 0.5 and below 1")
    line = usage_error(capsys, ["train", "--data", "x", "--ood-bank", "-5"])
    assert "--ood-bank: must be at least 0" in line
