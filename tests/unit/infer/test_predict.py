"""Prediction with the tiny model trained once per session (conftest.tiny_run): the Python API and imgclf predict."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli.main import main
from imgclf.exporting.export import export
from imgclf.infer import runtime
from imgclf.infer.predict import Predictor

TINY_CLASSES = ("cat", "dog", "fox")  # conftest.tiny_data


def _images(tiny_data: Path, split: str = "test") -> list[str]:
    return sorted(str(p) for p in (tiny_data / split).rglob("*") if p.is_file())


def _check_result(r: dict, classes: list[str], k: int) -> None:
    assert set(r) == {"path", "label", "index", "probability", "top_k"}
    assert r["label"] in classes and classes[r["index"]] == r["label"]
    assert len(r["top_k"]) == k
    probs = [t["probability"] for t in r["top_k"]]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-5
    assert r["top_k"][0] == {"label": r["label"], "probability": r["probability"]}
    assert len({t["label"] for t in r["top_k"]}) == k


@pytest.fixture
def nested_folder(tmp_path, image_of_class) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(5)
    root = tmp_path / "to_label"
    files = [root / "a.png", root / "sub" / "b.jpg", root / "sub" / "deeper" / "c.png", root / "z" / "d.JPEG"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        image_of_class(i % 3, 16, rng=rng).save(f, format="JPEG" if f.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    (root / "sub" / "notes.txt").write_text("not an image\n")
    return root, files


def test_package_api_names_are_functions(tiny_run):
    # The documented API: `imgclf.train(...)`, `imgclf.evaluate(...)`, `imgclf.Predictor(...)`. tiny_run has
    # trained a model, so the implementing submodules are imported by now, as they are in any real program
    # after its first call; the names must still be the functions.
    import imgclf
    import imgclf.evaluation.command as evaluate_module
    import imgclf.training.api as train_module

    assert imgclf.train is train_module.train, f"imgclf.train is {imgclf.train!r}"
    assert imgclf.evaluate is evaluate_module.evaluate, f"imgclf.evaluate is {imgclf.evaluate!r}"
    assert imgclf.Predictor is Predictor


def test_predict_paths_top_k(tiny_best, tiny_data):
    paths = _images(tiny_data)
    pred = Predictor(tiny_best, device="cpu")
    assert pred.classes == sorted(TINY_CLASSES)
    res = pred.predict(paths, top_k=2)
    assert [r["path"] for r in res] == paths
    for r in res:
        _check_result(r, pred.classes, 2)
    res3 = pred.predict(paths, top_k=3)
    for r in res3:
        _check_result(r, pred.classes, 3)
        assert math.isclose(sum(t["probability"] for t in r["top_k"]), 1.0, abs_tol=1e-4)  # all classes


def test_top_k_is_clamped_to_class_count(tiny_best, tiny_data):
    pred = Predictor(tiny_best, device="cpu")
    res = pred.predict(_images(tiny_data)[:2], top_k=100)
    for r in res:
        _check_result(r, pred.classes, len(TINY_CLASSES))


def test_unreadable_file_gets_error_and_others_predict(tiny_best, tiny_data, tmp_path):
    good = _images(tiny_data)[:3]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image\n")
    paths = [good[0], str(bad), good[1], good[2]]
    res = Predictor(tiny_best, device="cpu").predict(paths, top_k=2)
    assert len(res) == 4
    assert set(res[1]) == {"path", "error"} and res[1]["path"] == str(bad)
    assert "not an image" in res[1]["error"]
    for i in (0, 2, 3):
        assert res[i]["path"] == paths[i]
        _check_result(res[i], sorted(TINY_CLASSES), 2)


def test_pil_image_and_single_path(tiny_best, tiny_data, image_of_class):
    pred = Predictor(tiny_best, device="cpu")
    path = next(p for p in _images(tiny_data) if p.endswith(".png"))
    by_path = pred.predict(path, top_k=3)
    assert isinstance(by_path, dict) and by_path["path"] == path
    with Image.open(path) as im:
        by_image = pred.predict(im.copy(), top_k=3)
    assert isinstance(by_image, dict)
    _check_result(by_image, pred.classes, 3)
    # the same pixels through either door give the same answer
    assert by_image["label"] == by_path["label"]
    assert math.isclose(by_image["probability"], by_path["probability"], rel_tol=1e-5)
    # a PIL image in another mode and size is converted and resized like a file would be
    grey = image_of_class(0, (40, 24), rng=np.random.default_rng(0)).convert("L")
    _check_result(pred.predict(grey, top_k=2), pred.classes, 2)


def test_cli_predict_json_lines_recursive(capsys, tiny_best, nested_folder):
    root, files = nested_folder
    assert main(["predict", tiny_best, str(root), "--json", "--device", "cpu", "--top-k", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == len(files)
    objs = [json.loads(ln) for ln in lines]
    assert sorted(o["path"] for o in objs) == sorted(str(f) for f in files)
    for o in objs:
        assert {"path", "label", "probability", "top_k"} <= set(o)
        assert o["label"] in TINY_CLASSES and len(o["top_k"]) == 2


def test_cli_predict_output_csv_and_json(capsys, tiny_best, nested_folder, tmp_path):
    root, files = nested_folder
    out_csv, out_json = tmp_path / "preds.csv", tmp_path / "preds.json"
    assert main(["predict", tiny_best, str(root), "--output", str(out_csv), "--device", "cpu"]) == 0
    assert main(["predict", tiny_best, str(root), "--output", str(out_json), "--device", "cpu"]) == 0
    capsys.readouterr()
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(files)
    assert sorted(r["path"] for r in rows) == sorted(str(f) for f in files)
    assert all(r["label"] in TINY_CLASSES and 0 <= float(r["probability"]) <= 1 for r in rows)
    entries = json.loads(out_json.read_text())
    assert isinstance(entries, list) and len(entries) == len(files)
    assert sorted(e["path"] for e in entries) == sorted(str(f) for f in files)
    assert all(len(e["top_k"]) == len(TINY_CLASSES) for e in entries)  # default 5, clamped to 3


def test_cli_predict_escapes_names_on_stdout_and_neutralises_formula_cells(
    capsys, tiny_best, tmp_path, image_of_class, monkeypatch
):
    """Issue 22, defect 12: a file name with a newline or NUL printed raw in predict's stdout table (a forged row),
    and a CSV cell starting with = + - @ was written as is (a spreadsheet runs it). Now every stdout row is one
    line with the name escaped, and the CSV's formula cells start with a quote; the probabilities stay numbers."""
    monkeypatch.chdir(tmp_path)  # relative names, as a user types them: the cells start with the name itself
    rng = np.random.default_rng(2)
    names = ["=HYPERLINK(1).png", "-x.png", "@y.png", "+z.png", "new\nline.png", "tab\tname.png", "plain.png"]
    for i, n in enumerate(names):
        image_of_class(i % 3, 16, rng=rng).save(tmp_path / n, format="PNG")
    listing = tmp_path / "list.txt"
    # (a NUL cannot be in a path: a --files-from holding one is refused whole, tests/unit/cli/test_usage_errors.py)
    listing.write_text("".join(n + "\n" for n in names if "\n" not in n), encoding="utf-8")
    out = tmp_path / "preds.csv"
    argv = ["predict", tiny_best, "new\nline.png", "--files-from", str(listing), "--output", str(out)]
    assert main(argv + ["--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert len(lines) == len(names), stdout  # one line per entry: no name breaks a row
    assert lines[0].startswith("new\\nline.png\t")
    assert any(ln.startswith("tab\\tname.png\t") for ln in lines) and "\0" not in stdout
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    assert paths[:1] == ["new\nline.png"]  # a CSV holds any name exactly (quoted); only formulas are changed
    for n in ("=HYPERLINK(1).png", "-x.png", "@y.png", "+z.png"):
        assert "'" + n in paths and n not in paths, (n, paths)
    assert "plain.png" in paths
    assert all(0 <= float(r["probability"]) <= 1 for r in rows if not r["error"])


def test_multilabel_predictor_gives_the_set_by_the_models_thresholds(multilabel_ckpt, multilabel_csv, tmp_path):
    """A multi-label model's result: every label's sigmoid probability (the model's own logits, computed here
    apart), and the labels whose score reaches the model's threshold for it (0.5, 0.4, 0.6), in class order; an
    unreadable file is still an error row; --min-confidence has no meaning for it and is refused."""
    import torch

    from imgclf.core.errors import UsageError
    from imgclf.data.images import load_image, pil_to_uint8
    from imgclf.data.pipeline import eval_transform
    from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint

    paths = sorted(str(p) for p in (multilabel_csv.parent / "img").glob("test_*.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    got = Predictor(multilabel_ckpt, device="cpu").predict([*paths, str(tmp_path / "bad.png")])
    assert got[-1]["path"].endswith("bad.png") and "error" in got[-1] and set(got[-1]) == {"path", "error"}
    ck = load_checkpoint(multilabel_ckpt)
    model = model_from_checkpoint(ck, torch.device("cpu"), channels_last=False)
    pre = Predictor(multilabel_ckpt, device="cpu").preprocess
    x = torch.stack([eval_transform(pre)(pil_to_uint8(load_image(p, resize=pre.resize))) for p in paths])
    with torch.no_grad():
        want = torch.sigmoid(model(x)).tolist()
    for r, w in zip(got, want):
        assert list(r["scores"]) == ["blue", "green", "red"]
        assert list(r["scores"].values()) == pytest.approx(w, abs=1e-5)
        assert r["labels"] == [c for c, s, t in zip(["blue", "green", "red"], w, [0.5, 0.4, 0.6]) if s >= t]
    with pytest.raises(UsageError, match="--min-confidence is for single-label models"):
        Predictor(multilabel_ckpt, device="cpu", min_confidence=0.5)
    # --threshold T: T for every label instead of the model's own (0: every label, 1: only a score of exactly 1)
    for t in (0.0, 1.0):
        for r in Predictor(multilabel_ckpt, device="cpu", threshold=t).predict(paths):
            assert r["labels"] == [c for c, s in r["scores"].items() if s >= t]


def test_decode_threads_give_numpy_and_the_batch_is_the_per_image_transform(tiny_best, tiny_data):
    """The decode threads hand over uint8 crops (no PyTorch operation runs there), and normalising the stacked
    crops gives bit-for-bit what `transform` gives image by image."""
    pred = Predictor(tiny_best, device="cpu", batch_size=4)
    files = _images(tiny_data)[:5]
    crops = [pred._load(f) for f in files]
    s = pred.preprocess.img_size
    assert all(isinstance(c, np.ndarray) and c.dtype == np.uint8 and c.shape == (s, s, 3) for c in crops)
    each = torch.stack([pred.transform(pred.load_uint8(f)) for f in files])
    assert torch.equal(pred.normalize(crops), each)


def test_batches_ahead_keep_the_input_order(tiny_best, tiny_data):
    pred = Predictor(tiny_best, device="cpu", batch_size=2)
    files = _images(tiny_data)[:7]
    batches = list(pred.predict_batches(files, top_k=1))
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    assert [r["path"] for b in batches for r in b] == files


@pytest.fixture(scope="module")
def tiny_onnx(tiny_best, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("lanes") / "tiny.onnx"
    export(tiny_best, "onnx", out=str(out), verify_images=8)
    return str(out)


@pytest.mark.parametrize("which", ["single", "multilabel"])
def test_lanes_answer_as_one_call_in_input_order_and_keep_the_unreadable(
    which, tiny_onnx, multilabel_onnx, tiny_data, multilabel_csv, tmp_path, monkeypatch
):
    """An ONNX file on the CPU runs in lanes (single-threaded runs side by side, each decoding its own batch): three
    lanes here, whatever the machine's cores, over batches of 2; the answers are those of the whole set run in one
    call of a runner opened the usual way, in input order, and an unreadable file keeps its error row."""
    monkeypatch.setattr(runtime, "lane_count", lambda: 3)
    model = tiny_onnx if which == "single" else multilabel_onnx
    files = (
        _images(tiny_data)[:9] if which == "single" else sorted(map(str, (multilabel_csv.parent / "img").glob("*")))[:9]
    )
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    paths = [*files[:4], str(bad), *files[4:]]
    pred = Predictor(model, device="cpu", batch_size=2)
    assert pred.lanes == 3 and pred.runner.lanes() == 3
    got = pred.predict(paths, top_k=2)
    assert [r["path"] for r in got] == paths and "error" in got[4]
    ok = [r for r in got if "error" not in r]
    whole = runtime.open_model(model, device="cpu")  # intra-op threads as usual: no lanes
    assert whole.lanes() == 1
    want = whole.probabilities(whole.logits(pred.normalize([pred._load(f) for f in files])))
    if which == "single":
        assert [r["label"] for r in ok] == [pred.classes[i] for i in want.argmax(1).tolist()]
        got_p = torch.tensor([r["probability"] for r in ok])
        assert torch.allclose(got_p, want.max(1).values, atol=1e-5)
        _check_result(ok[0], pred.classes, 2)
    else:
        got_p = torch.tensor([[r["scores"][c] for c in pred.classes] for r in ok])
        assert torch.allclose(got_p, want, atol=1e-5)
    # the Predictor's own `logits` on a whole batch splits it across the lanes: the same numbers
    batch = pred.normalize([pred._load(f) for f in files])
    assert torch.allclose(pred.logits(batch), whole.logits(batch), atol=1e-5)


def test_no_lanes_for_a_checkpoint_or_test_time_augmentation_outside_the_graph(tiny_best, tiny_onnx, monkeypatch):
    monkeypatch.setattr(runtime, "lane_count", lambda: 3)
    assert Predictor(tiny_best, device="cpu").lanes == 1  # PyTorch runs it on its own threads
    assert Predictor(tiny_onnx, device="cpu", tta="flip").lanes == 1  # flips in PyTorch beside each run
    assert Predictor(tiny_onnx, device="cpu", tta="none").lanes == 3


def test_a_model_error_in_a_lane_reaches_the_caller(tiny_onnx, tiny_data, monkeypatch):
    monkeypatch.setattr(runtime, "lane_count", lambda: 3)
    pred = Predictor(tiny_onnx, device="cpu", batch_size=2)
    calls, real = [], pred.runner.logits

    def logits(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("the model broke")
        return real(x)

    monkeypatch.setattr(pred.runner, "logits", logits)
    batches = pred.predict_batches(_images(tiny_data)[:8], top_k=1)
    with pytest.raises(RuntimeError, match="the model broke"):
        for _ in batches:
            pass
