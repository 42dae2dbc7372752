"""evaluation/multilabel.py: thresholds fitted for a goal, and the multi-label metrics."""

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.evaluation.multilabel import Goal, fit_thresholds, multilabel_metrics, parse_goal


def test_goals_parse_and_bad_ones_are_usage_errors():
    assert parse_goal(None) == Goal("f1") and parse_goal("F1") == Goal("f1")
    assert parse_goal("precision=0.9") == Goal("precision", 0.9) and parse_goal("0.5") == Goal("global", 0.5)
    assert str(parse_goal("recall=0.8")) == "recall=0.8"
    for bad in ("f2", "precision=", "precision=1.5", "1.5", "recall=0"):
        with pytest.raises(UsageError, match="is not a goal"):
            parse_goal(bad)


def test_fitted_thresholds_meet_their_goal():
    rng = np.random.default_rng(0)
    y = rng.random((400, 2)) < 0.3
    s = np.clip(y * 0.35 + rng.random((400, 2)) * 0.65, 0, 1)
    (t_prec, _), _ = fit_thresholds(s, y, Goal("precision", 0.9))
    assert ((s[:, 0] >= t_prec) & y[:, 0]).sum() / (s[:, 0] >= t_prec).sum() >= 0.9
    (t_rec, _), _ = fit_thresholds(s, y, Goal("recall", 0.95))
    assert ((s[:, 0] >= t_rec) & y[:, 0]).sum() / y[:, 0].sum() >= 0.95
    t_f1, _ = fit_thresholds(s, y, Goal("f1"))
    at_half = multilabel_metrics(s, y, [0.5, 0.5], ["a", "b"])["macro_f1"]
    assert multilabel_metrics(s, y, t_f1, ["a", "b"])["macro_f1"] >= at_half
    assert fit_thresholds(s, y, Goal("global", 0.3))[0] == [0.3, 0.3]


def test_a_label_without_positives_keeps_a_half_and_its_ap_is_undefined():
    s = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
    y = np.array([[1, 0], [0, 0], [1, 0]])
    t, notes = fit_thresholds(s, y, Goal("f1"))
    assert t[1] == 0.5 and "no positive" in notes[0]
    m = multilabel_metrics(s, y, t, ["a", "b"])
    assert m["per_label"]["b"]["ap"] is None and m["mAP"] == 1.0
    assert m["exact_match"] == 1.0 and m["hamming_loss"] == 0.0


def test_metrics_by_hand():
    s = np.array([[0.9, 0.6], [0.4, 0.7], [0.2, 0.1]])
    y = np.array([[1, 0], [1, 1], [0, 0]])
    m = multilabel_metrics(s, y, [0.5, 0.5], ["a", "b"])
    # predictions: [1,1], [0,1], [0,0]: one of three images exact, two of six cells wrong
    assert m["exact_match"] == pytest.approx(1 / 3) and m["hamming_loss"] == pytest.approx(2 / 6)
    assert m["per_label"]["a"]["recall"] == 0.5 and m["per_label"]["b"]["precision"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_a_fitted_threshold_sits_halfway_below_its_score_not_on_it():
    # every positive saturated at 1.0 (fp32 sigmoids of a confident model), negatives up to 0.3: a threshold of 1.0
    # would drop a test positive scoring 0.9999; halfway to the next lower score keeps the same validation decisions
    s = np.array([[1.0], [1.0], [0.3], [0.1]])
    y = np.array([[1], [1], [0], [0]])
    (t,), _ = fit_thresholds(s, y, Goal("f1"))
    assert t == pytest.approx(0.65)
    assert multilabel_metrics(s, y, [t], ["a"])["micro_f1"] == 1.0
