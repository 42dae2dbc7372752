"""imgclf evaluate --ood-data: AUROC, FPR at 95% TPR and the rejected fractions per score in eval.json, the text
report and report.html; the folder's usage errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import usage_error
from PIL import Image
from sklearn.metrics import roc_auc_score

from imgclf.cli.main import main
from imgclf.core import ood as oodscores
from imgclf.data.feed import make_feed
from imgclf.data.sources import Split
from imgclf.evaluation.command import evaluate
from imgclf.infer.logits import open_model_data
from imgclf.infer.predict import walk_images
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("in_tmp")


def _scores(runner, split: Split) -> dict[str, np.ndarray]:
    feed, _ = make_feed(split, runner.preprocess, cache="memory", workers=1, eval_batch_size=16)
    parts = [runner.ood_scores(x)[1] for x, _ in feed.batches()]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _files(folder) -> Split:
    paths = list(walk_images(str(folder)))
    return Split(name="ood", labels=[0] * len(paths), paths=paths)


def _outputs(runner, split: Split) -> tuple[np.ndarray, np.ndarray]:
    feed, _ = make_feed(split, runner.preprocess, cache="memory", workers=1, eval_batch_size=16)
    outs = [runner.outputs(x) for x, _ in feed.batches()]
    return tuple(np.concatenate([o[k].numpy() for o in outs]) for k in ("logits", "features"))


@pytest.fixture(scope="module")
def ood_ckpt(tiny_best, tmp_path_factory) -> str:
    """tiny_best with an out-of-distribution entry made here (not by imgclf's fitting): a bank of its training
    images' features and the thresholds that accept 95% of its validation images."""
    runner = open_model(tiny_best, device="cpu", precision="fp32")
    _, bank = _outputs(runner, open_model_data(runner.config, None, "train")[1])
    logits, feats = _outputs(runner, open_model_data(runner.config, None, "val")[1])
    k = oodscores.neighbours_for(len(bank))
    val = oodscores.scores({"logits": logits, "knn": oodscores.knn_distance(feats, bank, k)}, runner.task)
    record = oodscores.fit_record(val, accept=0.95, temperature=runner.temperature, bank_size=len(bank), k=k)
    ckpt = load_checkpoint(tiny_best)
    ckpt["ood"] = {"record": record, "bank": torch.from_numpy(bank).half()}
    path = tmp_path_factory.mktemp("oodckpt") / "with_ood.pt"
    save_checkpoint(ckpt, str(path))
    return str(path)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    """Noise images in nested folders (the layout does not matter), and one file that is no image."""
    root = tmp_path_factory.mktemp("noise") / "unknown"
    rng = np.random.default_rng(3)
    for i in range(14):
        sub = root / f"part{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(sub / f"n{i}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_evaluate_ood_data_measures_every_score(ood_ckpt, noise_dir, tmp_path):
    out = tmp_path / "ev"
    m = evaluate(ood_ckpt, split="val", out=str(out), workers=0, device="cpu", precision="fp32", ood_data=noise_dir)
    o = m["ood"]
    assert json.loads((out / "eval.json").read_text())["ood"] == json.loads(json.dumps(o))
    assert set(o["scores"]) == {"msp", "energy", "knn"}
    assert (o["known_images"], o["unknown_images"]) == (18, 14)
    assert [r["path"] for r in o["left_out"]] == [str(noise_dir / "broken.jpg")]
    assert "note" not in o and o["stored"]["accept"] == 0.95
    # the same numbers straight from the runner's scores and scikit-learn
    runner = open_model(ood_ckpt, device="cpu", precision="fp32")
    known = _scores(runner, open_model_data(runner.config, None, "val")[1])
    unknown = _scores(runner, _files(noise_dir))
    record = runner.ood
    for name, s in o["scores"].items():
        k, u = known[name], unknown[name]
        y = np.r_[np.zeros(len(k)), np.ones(len(u))]
        assert s["auroc"] == pytest.approx(roc_auc_score(y, np.r_[k, u]), abs=1e-6)
        ks = np.sort(k)
        j = int(np.ceil(0.95 * len(ks))) - 1  # the fewest lowest scores that make up 95%, halfway to the next
        t95 = (ks[j] + ks[j + 1]) / 2 if j + 1 < len(ks) else ks[j]
        assert s["fpr_at_95_tpr"] == pytest.approx(np.mean(u <= t95), abs=1e-6)
        t = record["thresholds"][name]
        assert s["threshold"] == pytest.approx(t)
        assert s["rejected_unknown"] == pytest.approx(np.mean(u > t), abs=1e-6)
        assert s["rejected_known"] == pytest.approx(np.mean(k > t), abs=1e-6) and s["rejected_known"] <= 0.05
        h = s["histogram"]
        assert (sum(h["known"]), sum(h["unknown"]), len(h["edges"])) == (18, 14, len(h["known"]) + 1)
    # noise is far from every training feature: kNN tells it apart
    assert o["scores"]["knn"]["auroc"] > 0.9
    # the figures, and report.html's section with its table and one figure per score
    for name in o["scores"]:
        with Image.open(out / f"ood_{name}.png") as im:
            assert im.format == "PNG"
    page = (out / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="ood"><h2>Out-of-distribution</h2>(.*?)</section>', page, re.S)
    assert section, "no Out-of-distribution section shown"
    body = section.group(1)
    assert "FPR at 95% TPR" in body and body.count('<img class="plot"') == 3
    assert f"{o['scores']['knn']['auroc']:.4f}" in body


def test_cli_without_stored_thresholds_reports_auroc_and_a_note(capsys, tiny_best, noise_dir, tmp_path):
    ckpt = load_checkpoint(tiny_best)  # a checkpoint from before the fit at training's end: no ood entry
    del ckpt["ood"]
    weights = str(tmp_path / "old.pt")
    save_checkpoint(ckpt, weights)
    rc = main(["evaluate", weights, "--out", str(tmp_path / "e"), "--workers", "0", "--ood-data", str(noise_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "ood_msp.png, ood_energy.png" in err
    text = out[out.index("out-of-distribution:") :]
    assert re.search(r"^msp\s+\d\.\d{4}\s+\d\.\d{4}\s+-\s+-\s+-$", text, re.M), text
    assert re.search(r"^energy\s+\d\.\d{4}", text, re.M) and "\nknn" not in text  # no bank: no kNN score
    assert "imgclf calibrate" in text and "1 unknown image file could not be read" in text
    o = json.loads((tmp_path / "e" / "eval.json").read_text())["ood"]
    assert set(o["scores"]) == {"msp", "energy"} and "imgclf calibrate" in o["note"]
    assert o["stored"] is None and o["scores"]["msp"]["rejected_unknown"] is None
    assert "fraction of unknown images accepted" in o["definitions"]["fpr_at_95_tpr"]


def test_ood_data_usage_errors(capsys, tiny_best, tmp_path):
    base = ["evaluate", tiny_best, "--out", str(tmp_path / "e"), "--workers", "0", "--ood-data"]
    line = usage_error(capsys, base + [str(tmp_path / "nowhere")])
    assert "--ood-data" in line and "does not exist" in line
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    line = usage_error(capsys, base + [str(tmp_path / "empty")])
    assert "--ood-data" in line and "no image files" in line
    (tmp_path / "bad").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "bad" / name).write_bytes(b"\x00garbage")
    line = usage_error(capsys, base + [str(tmp_path / "bad")])
    assert "none of its 2 image files can be read" in line
    assert not (tmp_path / "e").exists()  # refused before anything was written


def test_an_export_without_features_gives_msp_and_energy_as_its_checkpoint_does(ood_ckpt, noise_dir, tmp_path):
    """A TorchScript file has no feature output: msp and energy only, the same numbers as the checkpoint's."""
    from imgclf.exporting.export import export

    ts = export(ood_ckpt, "torchscript", out=str(tmp_path / "m.ts"), calib_images=8, verify_images=4)["out"]
    kw = dict(split="val", workers=0, device="cpu", precision="fp32", plots=False, ood_data=str(noise_dir))
    got = evaluate(ts, out=str(tmp_path / "ts"), **kw)["ood"]
    ref = evaluate(ood_ckpt, out=str(tmp_path / "ck"), **kw)["ood"]
    assert set(got["scores"]) == {"msp", "energy"} and got["unknown_images"] == 14
    for name in ("msp", "energy"):
        for key in ("auroc", "fpr_at_95_tpr"):
            assert got["scores"][name][key] == pytest.approx(ref["scores"][name][key], abs=1e-6)


def test_a_multilabel_model(multilabel_ckpt, noise_dir, tmp_path):
    """A multi-label model's scores (core/ood.py: 1 - its highest sigmoid, the joint energy) are measured alike."""
    o = evaluate(multilabel_ckpt, split="val", out=str(tmp_path / "ml"), workers=0, device="cpu", ood_data=noise_dir)[
        "ood"
    ]
    runner = open_model(multilabel_ckpt, device="cpu")
    known = _scores(runner, open_model_data(runner.config, None, "val")[1])
    unknown = _scores(runner, _files(noise_dir))
    assert set(o["scores"]) == {"msp", "energy"} and o["known_images"] == len(known["msp"]) == 10
    for name, s in o["scores"].items():
        y = np.r_[np.zeros(len(known[name])), np.ones(len(unknown[name]))]
        assert s["auroc"] == pytest.approx(roc_auc_score(y, np.r_[known[name], unknown[name]]), abs=1e-6)
    assert (tmp_path / "ml" / "ood_energy.png").is_file()
    assert '<section id="ood">' in (tmp_path / "ml" / "report.html").read_text(encoding="utf-8")


def test_non_finite_scores_are_counted_and_left_out():
    from imgclf.evaluation.ood_eval import format_ood, measure_score, ood_metrics

    s = measure_score(np.array([0.1, 0.2, np.inf]), np.array([1.0, np.nan, 2.0]), threshold=0.5)
    assert s["auroc"] == 1.0 and s["non_finite"] == {"known": 1, "unknown": 1}
    assert sum(s["histogram"]["known"]) == 2 and sum(s["histogram"]["unknown"]) == 2
    none = {"energy": np.array([np.nan, np.nan])}
    o = ood_metrics(none, {"energy": np.array([1.0])}, None, folder="/x", split="val", left_out=[])
    assert o["scores"]["energy"]["auroc"] is None and "imgclf calibrate" in o["note"]
    assert re.search(r"^energy\s+-\s+-\s+-\s+-\s+-$", format_ood(o), re.M)
