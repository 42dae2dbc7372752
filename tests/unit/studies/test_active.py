"""Active learning: the strategies' scores and order, `imgclf select` on a pool, and the simulation."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli.main import main
from imgclf.infer.predict import Predictor
from imgclf.studies.active import select
from imgclf.studies.figures import SHEET_COLS, sheet_figure
from imgclf.studies.strategies import diverse, entropy, least_confidence, margin, rank

# Known probabilities, one row per image. Row 4 has a lower top probability than row 0 would suggest is
# "less sure" by least-confidence (1 - 0.55 < 1 - 0.5) yet a higher entropy: the two strategies disagree on it.
PROBS = np.array(
    [
        [0.5, 0.5, 0.0],
        [0.9, 0.05, 0.05],
        [0.4, 0.35, 0.25],
        [1.0, 0.0, 0.0],
        [0.55, 0.225, 0.225],
    ]
)


def _h(*ps) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


def test_scores_match_a_hand_computation():
    assert entropy(PROBS) == pytest.approx(
        [_h(0.5, 0.5), _h(0.9, 0.05, 0.05), _h(0.4, 0.35, 0.25), 0.0, _h(0.55, 0.225, 0.225)]
    )
    assert margin(PROBS) == pytest.approx([0.0, 0.85, 0.05, 1.0, 0.325])
    assert least_confidence(PROBS) == pytest.approx([0.5, 0.1, 0.6, 0.0, 0.45])


def test_each_strategy_orders_as_it_means():
    # entropy: 1.080 (row 2), 1.000 (row 4), 0.693 (row 0), 0.394 (row 1), 0 (row 3): highest first
    assert rank(PROBS, "entropy", 5).tolist() == [2, 4, 0, 1, 3]
    # margin: 0 (row 0), 0.05 (row 2), 0.325 (row 4), 0.85 (row 1), 1 (row 3): smallest first
    assert rank(PROBS, "margin", 5).tolist() == [0, 2, 4, 1, 3]
    # least-confidence: 0.6 (row 2), 0.5 (row 0), 0.45 (row 4), 0.1 (row 1), 0 (row 3): highest first
    assert rank(PROBS, "least-confidence", 5).tolist() == [2, 0, 4, 1, 3]
    assert rank(PROBS, "entropy", 2).tolist() == [2, 4]
    assert rank(PROBS, "margin", 99).tolist() == [0, 2, 4, 1, 3]  # more than the pool: all of it
    r = rank(PROBS, "random", 3, seed=1)
    assert len(set(r.tolist())) == 3 and rank(PROBS, "random", 3, seed=1).tolist() == r.tolist()


def _three_clusters(n: int = 30, dim: int = 16, seed: int = 0):
    """Features in three well-separated blobs. Blob 0 is one confusing scene: near-copies of one image, all
    the most uncertain (margin about 0.02); blobs 1 and 2 are varied and less uncertain (margins 0.2-0.4)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3] * 10.0
    spread = [0.01, 1.0, 1.0]
    feats = np.concatenate([centres[c] + spread[c] * rng.normal(size=(n, dim)) for c in range(3)])
    blob = np.repeat(np.arange(3), n)
    m = np.where(blob == 0, 0.02 + 0.001 * rng.random(3 * n), 0.2 + 0.2 * rng.random(3 * n))
    p1 = (1 + m) / 2
    probs = np.stack([p1, 1 - p1], axis=1)
    return feats, probs, blob


def test_diverse_spreads_the_picks_where_uncertainty_alone_does_not():
    feats, probs, blob = _three_clusters()
    assert set(blob[rank(probs, "margin", 6)].tolist()) == {0}  # six copies of the confusing scene
    picked = diverse(feats, probs, 6, seed=0)
    assert len(set(picked.tolist())) == 6
    assert set(blob[picked].tolist()) == {0, 1, 2}
    assert (blob[picked] == 0).sum() <= 2
    assert np.all(np.diff(margin(probs)[picked]) >= 0)  # the most uncertain pick first
    assert diverse(feats, probs, 6, seed=0).tolist() == picked.tolist()  # seeded


def test_diverse_returns_exactly_k_even_with_duplicates():
    feats = np.zeros((20, 4))  # every image the same: k-means finds one cluster
    probs = np.tile([0.6, 0.4], (20, 1))
    picked = diverse(feats, probs, 5, seed=0)
    assert len(picked) == 5 and len(set(picked.tolist())) == 5


# --------------------------------------------------------------------------------------------- select


@pytest.fixture
def pool(make_folder, tmp_path) -> Path:
    """15 readable images in class-named subfolders (the names say nothing to select) and one broken file."""
    root = make_folder(tmp_path / "pool", layout="flat", classes=("cat", "dog", "fox"), n=5)
    (root / "fox" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_select_excludes_labelled_paths_and_skips_unreadable(tiny_best, pool, tmp_path):
    images = sorted(str(p) for p in pool.rglob("*.*") if p.name != "broken.jpg")
    manifest = tmp_path / "lists" / "labelled.csv"
    manifest.parent.mkdir()
    # relative to the CSV's own folder, as the data manifests are
    rel = [str(Path("..") / "pool" / Path(p).relative_to(pool)) for p in images[:3]]
    manifest.write_text("path,label\n" + "".join(f"{p},x\n" for p in rel))
    sel = select(
        tiny_best,
        str(pool),
        budget=6,
        strategy="entropy",
        exclude=[str(manifest), str(pool / "dog")],
        out=str(tmp_path / "out"),
    )
    labelled = set(images[:3]) | {p for p in images if "/dog/" in p}
    rows = _rows(sel.csv)
    assert len(rows) == 6 == len(sel.rows)
    assert not {r["path"] for r in rows} & labelled
    assert sel.excluded == len(labelled) and sel.scored == 15 - len(labelled)
    assert [p for p, _ in sel.unreadable] == [str(pool / "fox" / "broken.jpg")]
    assert "broken.jpg" not in {Path(r["path"]).name for r in rows}
    assert _rows(Path(sel.out) / "unreadable.csv")[0]["path"].endswith("broken.jpg")
    # the scores are the entropies of what `predict` says, highest first
    preds = Predictor(tiny_best).predict([r["path"] for r in rows], top_k=3)
    want = [_h(*(t["probability"] for t in p["top_k"])) for p in preds]
    assert [float(r["score"]) for r in rows] == pytest.approx(want, abs=1e-5)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert [r["predicted_label"] for r in rows] == [p["label"] for p in preds]


def test_select_cli_twice_never_picks_the_same_image(capsys, tiny_best, pool, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    args = ["select", tiny_best, "--pool", str(pool), "--budget", "5", "--strategy", "margin"]
    assert main([*args, "--out", str(first)]) == 0
    out = capsys.readouterr().out
    assert "selected 5 of 15" in out and "margin p1 - p2" in out
    assert main([*args, "--out", str(second), "--exclude", str(first / "selected.csv")]) == 0
    a, b = _rows(first / "selected.csv"), _rows(second / "selected.csv")
    assert len(a) == len(b) == 5 and not {r["path"] for r in a} & {r["path"] for r in b}
    margins = [float(r["score"]) for r in b]
    assert margins == sorted(margins)


def test_select_budget_over_the_pool_takes_all_of_it(capsys, tiny_best, pool, tmp_path):
    assert main(["select", tiny_best, "--pool", str(pool / "cat"), "--budget", "50", "--out", str(tmp_path / "o")]) == 0
    assert len(_rows(tmp_path / "o" / "selected.csv")) == 5
    assert "fewer than --budget 50: all of them are selected" in capsys.readouterr().err


def test_select_from_a_csv_pool_with_diverse(tiny_best, pool, tmp_path):
    images = sorted(p for p in pool.rglob("*.png"))
    listing = tmp_path / "pool.csv"
    listing.write_text("path\n" + "".join(f"{p.relative_to(tmp_path)}\n" for p in images))
    sel = select(tiny_best, str(listing), budget=3, strategy="diverse", out=str(tmp_path / "d"))
    assert len(sel.rows) == 3 and {r["path"] for r in sel.rows} <= {str(p) for p in images}
    margins = [r["score"] for r in sel.rows]
    assert margins == sorted(margins)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_select_bad_input_is_one_line_before_any_work(capsys, tiny_best, pool, tmp_path):
    out = tmp_path / "never"
    base = ["select", tiny_best, "--budget", "2", "--out", str(out)]
    assert "not found" in _one_line_error(capsys, [*base, "--pool", str(tmp_path / "nope")])
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("file\na.png\n")
    assert "path column" in _one_line_error(capsys, [*base, "--pool", str(nocol)])
    assert "--exclude" in _one_line_error(capsys, [*base, "--pool", str(pool), "--exclude", str(tmp_path / "x.csv")])
    assert "already labelled" in _one_line_error(capsys, [*base, "--pool", str(pool), "--exclude", str(pool)])
    assert "--budget" in _one_line_error(capsys, ["select", tiny_best, "--pool", str(pool), "--budget", "0"])
    assert "--strategy" in _one_line_error(capsys, [*base, "--pool", str(pool), "--strategy", "entropic"])
    assert "weights file" in _one_line_error(
        capsys, ["select", str(tmp_path / "w.pt"), "--pool", str(pool), "--budget", "1"]
    )
    assert not out.exists()


def test_diverse_with_an_export_says_it_needs_a_checkpoint(capsys, tiny_best, pool, tmp_path):
    pytest.importorskip("onnxruntime")
    from imgclf.exporting.export import export

    onnx = export(tiny_best, "onnx", out=str(tmp_path / "m.onnx"), calib_images=32, verify_images=24)["out"]
    out = tmp_path / "never"
    line = _one_line_error(
        capsys, ["select", onnx, "--pool", str(pool), "--budget", "3", "--strategy", "diverse", "--out", str(out)]
    )
    assert "onnx" in line and "checkpoint" in line and "entropy" in line
    assert not out.exists()
    # the uncertainty strategies need only probabilities: an export does
    assert main(["select", onnx, "--pool", str(pool), "--budget", "3", "--out", str(tmp_path / "ok")]) == 0
    assert len(_rows(tmp_path / "ok" / "selected.csv")) == 3


def test_contact_sheet_is_a_readable_grid(tiny_best, pool, tmp_path):
    sel = select(tiny_best, str(pool), budget=10, strategy="least-confidence", out=str(tmp_path / "s"))
    fig = sheet_figure(sel.rows, title="t")
    assert len(fig.axes) == 2 * SHEET_COLS  # 10 images: a row of 8 and a row of 2
    with_image = [ax for ax in fig.axes if ax.images]
    assert len(with_image) == 10
    captions = [t.get_text() for ax in with_image for t in ax.texts]
    first = sel.rows[0]
    assert captions[0].startswith(f"1. {Path(first['path']).name}")
    assert f"{first['predicted_label']} {first['probability']:.2f}, score {first['score']:.3f}" in captions[0]
    with Image.open(sel.sheet) as im:
        assert im.format == "PNG" and im.width >= SHEET_COLS * 150 and im.height >= 2 * 150
    for ax in with_image:  # thumbnails big enough to look at: the 16 px images are drawn at THUMB_PX
        assert min(ax.images[0].get_array().shape[:2]) >= 150


# --------------------------------------------------------------------------------------------- the simulation


def test_simulation_runs_rounds_and_writes_its_csv_and_plot(capsys, tiny_data, tiny_best, tmp_path):
    out = tmp_path / "sim"
    argv = ["active-sim", "--data", str(tiny_data), "--features", tiny_best, "--start", "6", "--budget", "6"]
    argv += ["--rounds", "2", "--seeds", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "random" in printed and "vs random" in printed
    rows = _rows(out / "active_sim.csv")
    assert list(rows[0]) == ["strategy", "seed", "round", "labels", "accuracy"]
    assert len(rows) == 4 * 2 * 3  # strategies x seeds x (start + 2 rounds)
    assert {(r["round"], r["labels"]) for r in rows} == {("0", "6"), ("1", "12"), ("2", "18")}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    for seed in ("0", "1"):  # the same start set for every strategy of a seed
        assert len({r["accuracy"] for r in rows if r["seed"] == seed and r["round"] == "0"}) == 1
    summary = _rows(out / "active_sim_summary.csv")
    assert len(summary) == 4 * 3 and all(r["seeds"] == "2" for r in summary)
    with Image.open(out / "active_sim.png") as im:
        assert im.format == "PNG" and im.width > 400
    # again: the features come from OUT/features.pt, and the numbers are the same
    assert main(argv) == 0
    assert "features from" in capsys.readouterr().err
    assert _rows(out / "active_sim.csv") == rows


def test_simulation_bad_input_is_one_line_before_any_work(capsys, tiny_data, tiny_best, tmp_path):
    out = tmp_path / "never"
    base = ["active-sim", "--data", str(tiny_data), "--features", tiny_best, "--out", str(out)]
    assert "48 images" in _one_line_error(capsys, [*base, "--start", "40", "--budget", "5", "--rounds", "2"])
    assert "--strategies" in _one_line_error(capsys, [*base, "--strategies", "entropy,coreset"])
    assert "classes" in _one_line_error(capsys, [*base, "--start", "2", "--budget", "2", "--rounds", "1"])
    line = _one_line_error(capsys, ["active-sim", "--data", str(tiny_data), "--features", "efficientnet_lit0"])
    assert "did you mean 'efficientnet_lite0'" in line
    assert "no pretrained weights" in _one_line_error(capsys, [*base, "--features", "test_tiny"])
    assert not out.exists()


def test_multilabel_strategies_rank_by_their_per_label_meaning(multilabel_ckpt, multilabel_csv, tmp_path):
    from imgclf.studies.strategies import scores

    p = np.array([[0.5, 0.01], [0.9, 0.9], [0.6, 0.99]])
    assert scores(p, "entropy", "multilabel")[0] == pytest.approx(
        (math.log(2) + entropy(np.array([[0.01, 0.99]]))[0]) / 2
    )
    assert rank(p, "margin", 3, task="multilabel").tolist() == [0, 2, 1]  # the label nearest 0.5 first
    assert rank(p, "least-confidence", 1, task="multilabel").tolist() == [0]
    sel = select(multilabel_ckpt, str(multilabel_csv.parent / "img"), budget=3, out=str(tmp_path / "s"), device="cpu")
    pred = Predictor(multilabel_ckpt, device="cpu")
    r = pred.runner
    assert sel.task == "multilabel" and len(sel.rows) == 3
    for row in sel.rows:  # the pool scored by the model's sigmoids, ranked by mean binary entropy
        x = pred.transform(pred.load_uint8(row["path"]))[None]
        probs = r.probabilities(r.logits(x)).numpy()
        assert row["score"] == pytest.approx(scores(probs, "entropy", "multilabel")[0], abs=1e-5)
