"""--min-confidence: unsure answers below it, and its range."""

from __future__ import annotations

import csv
import json

import pytest

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.infer.predict import Predictor
from imgclf.models.checkpoint import load_checkpoint


def _val_paths(path_or_data) -> list[str]:
    from pathlib import Path

    root = Path(load_checkpoint(path_or_data)["config"]["data"]) if str(path_or_data).endswith(".pt") else path_or_data
    return sorted(str(p) for p in (Path(root) / "val").rglob("*") if p.is_file())


def test_min_confidence_answers_unsure_below_it(tiny_best, tiny_data, tmp_path, capsys):
    paths = _val_paths(tiny_data)
    plain = Predictor(tiny_best, device="cpu").predict(paths, top_k=2)
    probs = sorted({r["probability"] for r in plain})
    p = (probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2  # some rows on each side
    rows = Predictor(tiny_best, device="cpu", min_confidence=p).predict(paths, top_k=2)
    assert any(r["unsure"] for r in rows) and not all(r["unsure"] for r in rows)
    for a, b in zip(plain, rows):
        assert b["unsure"] == (a["probability"] < p)
        assert b["label"] == (None if b["unsure"] else a["label"])
        assert (b["index"], b["probability"], b["top_k"]) == (a["index"], a["probability"], a["top_k"])
    out = tmp_path / "p.csv"
    argv = ["predict", tiny_best, *paths, "--device", "cpu", "--min-confidence", str(p), "--output", str(out)]
    assert main([*argv, "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["unsure"] for r in printed] == [r["unsure"] for r in rows]
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    for row, r in zip(table, rows):
        assert row["unsure"] == str(r["unsure"]).lower()
        assert row["label"] == ("" if r["unsure"] else r["label"]) and row["index"] == str(r["index"])
    # without the option: no unsure field, an empty column
    assert "unsure" not in plain[0]


@pytest.mark.parametrize("p", ["0", "-0.1", "1.01", "nan", "high"])
def test_min_confidence_outside_0_1_is_a_usage_error(tiny_best, tiny_data, p, capsys):
    assert main(["predict", tiny_best, _val_paths(tiny_data)[0], "--min-confidence", p]) == 2
    assert "--min-confidence" in capsys.readouterr().err
    with pytest.raises(UsageError, match="min-confidence"):
        Predictor(tiny_best, min_confidence=float(p) if p != "high" else p)
