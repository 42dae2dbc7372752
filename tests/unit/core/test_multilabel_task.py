"""core/multilabel.py: the task and thresholds a model file records, and the label set they give."""

import pytest

from imgclf.core.errors import CheckpointError
from imgclf.core.multilabel import join_labels, label_set, split_labels, task_fields


def test_files_without_a_task_are_single_label():
    assert task_fields({}, 3) == ("single", None)


def test_multilabel_thresholds_are_checked_and_default_to_a_half():
    assert task_fields({"task": "multilabel"}, 2) == ("multilabel", [0.5, 0.5])
    assert task_fields({"task": "multilabel", "thresholds": [0.2, 1]}, 2) == ("multilabel", [0.2, 1.0])
    for bad in ([0.2], [0.2, 1.5], [0.2, float("nan")], [True, 0.5], "0.5"):
        with pytest.raises(CheckpointError, match="invalid thresholds"):
            task_fields({"task": "multilabel", "thresholds": bad}, 2, where="'m.onnx'")
    with pytest.raises(CheckpointError, match="task 'detect'"):
        task_fields({"task": "detect"}, 2)


def test_the_label_set_is_every_label_at_or_above_its_threshold_in_class_order():
    assert label_set([0.9, 0.1, 0.3], [0.5, 0.05, 0.31], ["a", "b", "c"]) == ["a", "b"]
    assert label_set([0.0, 0.0], [0.5, 0.5], ["a", "b"]) == []


def test_label_cells_round_trip():
    assert split_labels(" cat | dog|cat||") == ["cat", "dog"] and split_labels("") == []
    assert split_labels(join_labels(["x", "y"])) == ["x", "y"]
