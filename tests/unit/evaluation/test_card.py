"""MODEL_CARD.md (evaluation/card.py): written at the end of training with the run's numbers, rebuilt identically
by `imgclf card`, picking up an evaluation made since; user strings escaped; refusals in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import usage_error

from imgclf.cli.main import main
from imgclf.evaluation.card import CARD_NAME, build_card

SECTIONS = [
    "## Model details",
    "### Model description",
    "## Uses",
    "### Direct use",
    "### Out-of-scope use",
    "## Bias, risks, and limitations",
    "## How to get started with the model",
    "## Training details",
    "### Training data",
    "### Training procedure",
    "## Evaluation",
    "### Results",
    "### Calibration",
    "### Robustness",
    "### Out-of-distribution",
    "## Technical specifications",
    "## Citation",
]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of a session's run folder that a test may add files to."""
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_training_writes_the_card_with_the_runs_numbers(tiny_run):
    text = (tiny_run / CARD_NAME).read_text(encoding="utf-8")
    results = json.loads((tiny_run / "results.json").read_text())
    meta = front_matter(text)
    assert meta["library_name"] == "imgclf" and meta["pipeline_tag"] == "image-classification"
    assert "test_tiny" in meta["tags"] and meta["datasets"] == ["pets"]
    (val,) = meta["model-index"][0]["results"]
    assert val["dataset"]["split"] == "val"
    assert val["metrics"][0] == {"type": "accuracy", "value": round(results["best"]["accuracy"], 4), "name": "Accuracy"}
    positions = [text.index(s + "\n") for s in SECTIONS]
    assert positions == sorted(positions), "the sections in Hugging Face's order"
    # the per-class table: results.json's numbers, one row per class
    for c, r in results["best"]["per_class"].items():
        row = f"| {c} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
        assert row in text
    counts = results["data"]["counts"]
    assert counts["train"] == {"cat": 16, "dog": 16, "fox": 16} and counts["test"] == {"cat": 3, "dog": 3, "fox": 3}
    assert "| cat | 16 | 6 | 3 |" in text  # images per class and split
    assert results["data_fingerprint"] in text and results["provenance"]["machine"] in text
    assert f"{results['trust']['ece']:.4f}" in text  # the validation ECE in the results table
    assert str(tiny_run / "best.pt") in text  # how to load it: the real path
    assert "Not measured on a held-out test split" in text  # no eval.json of the test split yet


def test_card_rebuilds_identically_and_picks_up_a_new_evaluation(tiny_run, tmp_path, capsys):
    import imgclf

    run = copy_run(tiny_run, tmp_path)
    best = str(run / "best.pt")
    first = build_card(best)
    assert main(["card", best]) == 0
    assert capsys.readouterr().out.strip() == str(run / CARD_NAME)
    assert (run / CARD_NAME).read_text(encoding="utf-8") == first == build_card(best)

    metrics = imgclf.evaluate(best, split="test", workers=0, plots=False)
    assert main(["card", best, "--out", str(tmp_path / "card.md")]) == 0
    text = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert text != first
    results = front_matter(text)["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["val", "test"]
    assert results[1]["metrics"][0]["value"] == round(metrics["accuracy"], 4)
    assert "#### Per class: test (`eval-test/eval.json`)" in text
    assert f"on {metrics['num_images']} test images" in text  # the summary now speaks of the test split
    assert "Not measured on a held-out test split" not in text


def test_class_names_and_paths_are_escaped(tiny_run, tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    run = copy_run(tiny_run, tmp_path)
    hostile = ["*bold* <img src=x onerror=alert(1)>", "a|b [x](http://e.com)", "# 1. `tick` $x$"]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["classes"] = hostile
    torch.save(ckpt, run / "best.pt")
    results = json.loads((run / "results.json").read_text())
    results["best"]["per_class"] = dict(zip(hostile, results["best"]["per_class"].values()))
    results["data"]["counts"] = {s: dict(zip(hostile, c.values())) for s, c in results["data"]["counts"].items()}
    (run / "results.json").write_text(json.dumps(results))
    text = build_card(str(run / "best.pt"))
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text.split("---\n", 2)[2])
    assert "<img" not in html and "<strong>bold" not in html and "<em>" not in html and 'href="http' not in html
    assert "<h1>1." not in html
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>", html)
    for name in hostile:  # each class a cell of its own, shown as written (HTML-escaped by the renderer)
        shown = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert shown in rows
    assert front_matter(text)["model-index"][0]["name"] == run.name


def test_huggingface_reads_the_card(tiny_run):
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard((tiny_run / CARD_NAME).read_text(encoding="utf-8"))
    assert card.data.library_name == "imgclf"
    got = [(r.metric_type, r.dataset_split, r.metric_value) for r in card.data.eval_results]
    assert [g[:2] for g in got] == [("accuracy", "val"), ("f1", "val")]
    results = json.loads((tiny_run / "results.json").read_text())
    assert got[0][2] == round(results["best"]["accuracy"], 4)


def test_multilabel_card(multilabel_run, tmp_path):
    import imgclf

    text = (multilabel_run / CARD_NAME).read_text(encoding="utf-8")
    results = json.loads((multilabel_run / "results.json").read_text())
    assert "multi-label" in front_matter(text)["tags"]
    assert "| label | AP | threshold | precision | recall | F1 | images |" in text
    assert f"{results['best']['micro_f1']:.4f}" in text
    run = copy_run(multilabel_run, tmp_path)
    m = imgclf.evaluate(str(run / "best.pt"), split="test", workers=0, plots=False)
    text = build_card(str(run / "best.pt"))  # an evaluation of a multi-label model: its own measures
    assert f"| test (`eval-test/eval.json`) | {m['num_images']} | {m['mAP']:.4f} |" in text


def test_refusals_are_one_line(tmp_path, capsys, tiny_best):
    line = usage_error(capsys, ["card", str(tmp_path / "missing.pt")])
    assert "not found" in line
    line = usage_error(capsys, ["card", tiny_best, "--out", str(tmp_path / "no" / "such" / "card.md")])
    assert "does not exist" in line
    assert usage_error(capsys, ["card", tiny_best, "--out", str(tmp_path)]).endswith(f"{CARD_NAME}")
    assert not list(tmp_path.iterdir())


def test_a_model_no_better_than_the_largest_class_is_said_so(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    results = json.loads((run / "results.json").read_text())
    per = results["best"]["per_class"]  # 6 images each: make it 10 cat, 4 dog, 4 fox, every one called cat
    per["cat"] |= {"support": 10, "recall": 1.0, "precision": 10 / 18}
    per["dog"] |= {"support": 4, "recall": 0.0, "precision": 0.0}
    per["fox"] |= {"support": 4, "recall": 0.0, "precision": 0.0}
    results["best"] |= {"accuracy": 10 / 18, "confusion_matrix": [[10, 0, 0], [4, 0, 0], [4, 0, 0]]}
    (run / "results.json").write_text(json.dumps(results))
    text = build_card(str(run / "best.pt"))
    summary = text.split("# Model card", 1)[1].split("## Model details")[0]
    assert "no better than always answering cat (55.6% of these images)" in summary
    assert "should not be used" in summary
    assert "- Weakest class on val: dog (recall 0.0%, 4 images)." in text
    assert "- 4 of the 4 dog images were taken for cat (100.0%)." in text
