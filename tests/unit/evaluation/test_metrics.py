"""The metrics on awkward inputs: a class never predicted, one class, top-5 only above five classes; no
library warning reaches the console."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder


def test_metrics_two_classes_one_never_predicted_no_warning(recwarn):
    # A model that always answers class 0: precision and F1 of class 1 are 0/0, reported as 0.
    from imgclf.evaluation.metrics import compute_metrics

    m = compute_metrics(torch.tensor([[2.0, 0.0]] * 6), torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert m["top5_accuracy"] is None
    assert [str(w.message) for w in recwarn] == []


def test_top5_only_above_five_classes(recwarn):
    # Before: with exactly 5 classes top-5 was 1.0 whatever the model did (and sklearn said so with an
    # UndefinedMetricWarning on the console).
    from imgclf.evaluation.metrics import compute_metrics, format_report

    g = torch.Generator().manual_seed(0)
    for n, has_top5 in ((5, False), (6, True)):
        logits = torch.randn(30, n, generator=g)
        labels = torch.arange(30) % n
        m = compute_metrics(logits, labels, [f"c{i}" for i in range(n)])
        assert (m["top5_accuracy"] is not None) == has_top5, (n, m["top5_accuracy"])
        assert ("top-5" in format_report(m)) == has_top5
    want = float((logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean())
    assert m["top5_accuracy"] == pytest.approx(want)
    assert [str(w.message) for w in recwarn] == []


def test_metrics_one_class_no_warning(recwarn):
    from imgclf.evaluation.metrics import compute_metrics

    m = compute_metrics(torch.tensor([[1.0]] * 3), torch.tensor([0, 0, 0]), ["only"])
    assert m["confusion_matrix"] == [[3]]
    assert [str(w.message) for w in recwarn] == []
