"""core/ood.py: the scores, the thresholds and the one rejection rule (no torch)."""

import numpy as np
import pytest

from imgclf.core import ood
from imgclf.core.errors import CheckpointError, UsageError


def test_msp_and_energy_are_higher_for_flatter_logits():
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    msp, energy = ood.msp_score(logits, "single"), ood.energy_score(logits, "single")
    assert msp[0] < msp[1] and energy[0] < energy[1]
    assert msp[1] == pytest.approx(2 / 3)
    assert energy[1] == pytest.approx(-(1 + np.log(3)))


def test_multilabel_scores_are_the_top_sigmoid_and_the_joint_energy():
    logits = np.array([[4.0, -4.0], [-4.0, -4.0]])
    assert ood.msp_score(logits, "multilabel")[0] == pytest.approx(1 - 1 / (1 + np.exp(-4)))
    assert ood.energy_score(logits, "multilabel")[1] == pytest.approx(-2 * np.log1p(np.exp(-4)))


def test_knn_distance_is_the_kth_neighbour():
    bank = np.eye(3, dtype=np.float32)
    q = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert ood.knn_distance(q, bank, 1)[0] == pytest.approx(0.0)
    assert ood.knn_distance(q, bank, 2)[0] == pytest.approx(np.sqrt(2))
    assert ood.knn_distance(q, bank, 50)[0] == pytest.approx(np.sqrt(2))  # k capped at the bank's size


def test_thresholds_accept_the_asked_fraction_of_known_images():
    known = np.arange(100, dtype=float)
    rec = ood.fit_record({"msp": known, "energy": -known}, accept=0.95, temperature=1.0)
    assert (known <= rec["thresholds"]["msp"]).mean() == pytest.approx(0.95, abs=0.011)
    assert rec["val_images"] == 100 and ood.check_record(rec, "x") is rec
    with pytest.raises(CheckpointError, match="damaged out-of-distribution record"):
        ood.check_record({"thresholds": {"msp": float("nan")}, "accept": 0.95}, "'m.onnx'")


def test_mark_unknown_nulls_the_label_and_keeps_the_scores():
    r = ood.mark_unknown({"label": "ant", "probability": 0.9}, "energy", -1.0, -2.0)
    assert r["unknown"] is True and r["label"] is None and r["probability"] == 0.9
    assert r["ood"] == {"score": "energy", "value": -1.0, "threshold": -2.0}
    r = ood.mark_unknown({"labels": ["a"], "scores": {"a": 0.9}}, "knn", 0.1, 0.5)
    assert r["unknown"] is False and r["labels"] == ["a"]
    assert ood.mark_unknown({"labels": ["a"]}, "knn", 0.9, 0.5)["labels"] == []


def test_check_reject_refuses_in_one_line():
    rec = {"thresholds": {"msp": 0.5, "energy": -3.0}, "accept": 0.95}
    assert ood.check_reject(None, None, rec) is None
    assert ood.check_reject("ood", None, rec) == "energy"  # no bank: energy is the default
    assert ood.check_reject("ood", None, {**rec, "thresholds": {**rec["thresholds"], "knn": 1.0}}) == "knn"
    for reject, score, record, words in [
        ("ood", None, None, "no out-of-distribution thresholds"),
        ("ood", "knn", rec, "no knn threshold"),
        ("ood", "maha", rec, "choose one of msp, energy, knn"),
        (None, "msp", rec, "needs --reject ood"),
        ("other", None, rec, "the only rejection is 'ood'"),
    ]:
        with pytest.raises(UsageError, match=words):
            ood.check_reject(reject, score, record)


def test_neighbours_scale_with_the_bank():
    assert [ood.neighbours_for(n) for n in (50, 10_000, 50_000, 200_000)] == [1, 10, 50, 50]
