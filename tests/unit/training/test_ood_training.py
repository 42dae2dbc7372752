"""The out-of-distribution fit at the end of a run (training/callbacks/report.py): best.pt carries the record and the
kNN bank, results.json the record, the log one line; single-label and multi-label runs (the session's runs: no
training here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgclf.core import ood
from imgclf.data.feed import make_feed
from imgclf.evaluation.ood_fit import split_scores
from imgclf.infer.logits import open_model_data
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, ood_of


@pytest.mark.parametrize("run", ["tiny_run", "multilabel_run"])
def test_a_run_keeps_its_fitted_scores_in_best_pt(run, request):
    run_dir = request.getfixturevalue(run)
    best = str(run_dir / "best.pt")
    record, bank = ood_of(load_checkpoint(best))
    runner = open_model(best, device="cpu", precision="fp32")
    src, val = open_model_data(runner.config, None, "val")
    n_train = len(src.splits["train"])
    assert set(record["thresholds"]) == set(ood.SCORES) and record["accept"] == ood.DEFAULT_ACCEPT
    assert record["bank_size"] == len(bank) == min(n_train, ood.DEFAULT_BANK) == record["train_images"]
    assert record["k"] == ood.neighbours_for(len(bank)) and record["temperature"] == runner.temperature
    assert record["val_images"] == len(val) and record["split"] == "val" and record["by"] == "train"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["ood"] == record and runner.ood == record
    assert "ood" not in load_checkpoint(str(run_dir / "last.pt"))  # the resuming state: other weights, no fit
    line = [ln for ln in (run_dir / "train.log").read_text().splitlines() if "out-of-distribution" in ln]
    assert len(line) == 1 and f"kNN bank of {len(bank)} of {n_train} training images, k {record['k']}" in line[0]
    # each threshold accepts at least 95% of the validation images' scores, and is the smallest that does
    feed, _ = make_feed(val, runner.preprocess, cache="memory", workers=1, eval_batch_size=16)
    scores = split_scores(runner, feed.batches(), bank, record["k"])
    for name, t in record["thresholds"].items():
        s = scores[name]
        assert np.mean(s <= t) >= 0.95 and np.mean(s < s[s <= t].max()) < 0.95, name
