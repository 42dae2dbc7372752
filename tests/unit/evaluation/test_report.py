"""report.html (report.py): the sections of a run's and an evaluation's page, no request leaving the file, the
sort script, sections left out with a reason, `imgclf report` on a bad folder; and the page in headless
Chromium (marked integration, as the serve page's browser test)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from conftest import chromium_page, needs_chromium, train_tiny

from imgclf.cli.main import main
from imgclf.evaluation.report import REPORT_NAME, build_report
from imgclf.evaluation.report_sections import confused_pairs

SECTIONS = ("machine", "data", "curves", "confusion", "per-class", "reliability", "mistakes", "check", "exports")


def _sections(page: str) -> dict[str, str]:
    """{section id: "shown" or the line saying why it is left out}."""
    out = {}
    for m in re.finditer(r'<section( class="missing")? id="([\w-]+)">(.*?)</section>', page, re.S):
        missing, key, body = m.groups()
        out[key] = re.sub(r"<[^>]+>", "", body).split("left out: ", 1)[1] if missing else "shown"
    return out


def _urls(page: str) -> list[str]:
    return re.findall(r'\b(?:src|href)\s*=\s*["\']([^"\']*)["\']', page)


def _copy_run(tiny_run, tmp_path) -> str:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns(REPORT_NAME, "eval-*"))
    return str(dst)


def test_training_and_evaluate_write_it_and_a_run_has_every_section(tiny_run, tmp_path):
    assert (tiny_run / REPORT_NAME).is_file()  # written at the end of training
    run = _copy_run(tiny_run, tmp_path)
    out = build_report(run)
    assert out == os.path.join(run, REPORT_NAME)
    page = open(out, encoding="utf-8").read()
    got = _sections(page)
    assert list(got) == list(SECTIONS)
    assert all(got[k] == "shown" for k in SECTIONS if k != "exports"), got
    assert "imgclf export" in got["exports"]
    assert "imgclf " in page and " cores " in page  # environment.summary_line
    assert "train 48, val 18" in page  # tiny_data's splits
    assert page.count('<img class="plot"') == 3  # curves, confusion, reliability (drawn here: a run has none)


def test_training_builds_it_from_its_own_validation_pass(tiny_data, tmp_path, monkeypatch):
    """The page at the end of a run is made from the logits training computed for results.json (divided by the
    temperature --calibrate fitted), not from a second pass over the validation images."""
    import imgclf.evaluation.report_folder as report_folder

    def second_pass(*a, **k):
        raise AssertionError("the report opened the validation split again")

    monkeypatch.setattr(report_folder, "_open_split", second_pass)
    res = train_tiny(tmp_path, str(tiny_data), "own-pass", epochs=1, calibrate=True)
    run, best = res["run_dir"], res["best"]
    assert "report.html not written" not in open(os.path.join(run, "train.log"), encoding="utf-8").read()
    page = open(os.path.join(run, REPORT_NAME), encoding="utf-8").read()
    assert f"accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f}, {best['num_images']} images" in page
    assert f"temperature {res['calibration']['temperature']:.4g} (imgclf calibrate)" in page


def test_evaluation_page(tiny_best, tmp_path):
    import imgclf

    m = imgclf.evaluate(tiny_best, split="test", out=str(tmp_path / "ev"), workers=0)
    page = (tmp_path / "ev" / REPORT_NAME).read_text(encoding="utf-8")  # written by evaluate
    got = _sections(page)
    assert "an evaluation has no training curves" in got["curves"]
    for k in ("machine", "data", "confusion", "per-class", "reliability", "mistakes", "check"):
        assert got[k] == "shown", (k, got[k])
    assert f"ECE (15 bins) <b>{m['calibration']['ece']:.4f}</b>" in page
    assert "test (9 images)" in page


def test_no_url_leaves_the_file_and_the_sort_script_is_there(tiny_run, tmp_path):
    page = open(build_report(_copy_run(tiny_run, tmp_path)), encoding="utf-8").read()
    urls = _urls(page)
    assert any(u.startswith("data:image/") for u in urls)
    for u in urls:
        assert u.startswith(("data:", "#")), u[:80]
        assert not re.match(r"(?i)(https?:)?//", u)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the browser itself refuses any request
    assert "<table class='sortable' id='per-class'>" in page
    assert 'querySelectorAll("table.sortable")' in page and "addEventListener" in page


def test_missing_artifacts_leave_their_sections_out_with_a_reason(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    for name in ("metrics.csv", "curves.png", "best.pt", "last.pt"):
        os.remove(os.path.join(run, name))
    got = _sections(open(build_report(run), encoding="utf-8").read())
    assert "no metrics.csv" in got["curves"]
    for k in ("confusion", "per-class", "reliability", "mistakes"):
        assert "weights" in got[k] and "not there" in got[k], (k, got[k])
    assert "no checkpoint" in got["exports"]
    assert got["machine"] == got["data"] == got["check"] == "shown"


def test_an_evaluation_folder_alone_is_escaped_and_needs_no_weights(tmp_path):
    """eval.json only (the weights and data gone): what it holds is shown, class names from the data escaped."""
    evil = '<img src=x onerror="alert(1)">'
    classes = [evil, "c&d"]
    ev = tmp_path / "eval-val"
    ev.mkdir()
    pc = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 4}
    (ev / "eval.json").write_text(
        json.dumps(
            {
                "accuracy": 0.5,
                "loss": 1.0,
                "macro_f1": 0.4,
                "top5_accuracy": None,
                "num_images": 8,
                "classes": classes,
                "per_class": {c: pc for c in classes},
                "confusion_matrix": [[1, 3], [1, 3]],
                "split": "val",
                "data": str(tmp_path / "gone"),
                "weights": str(tmp_path / "gone.pt"),
                "format": "checkpoint",
                "left_out": [{"path": "<b>x.jpg</b>", "reason": "truncated"}],
            }
        )
    )
    page = open(build_report(str(ev)), encoding="utf-8").read()
    assert evil not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<b>x.jpg</b>" not in page and "&lt;b&gt;x.jpg&lt;/b&gt;" in page
    got = _sections(page)
    assert got["confusion"] == got["per-class"] == "shown"
    assert "no calibration block" in got["reliability"]
    assert "not there" in got["mistakes"]
    assert "not one here" in got["check"]
    assert all(u.startswith(("data:", "#")) for u in _urls(page))


def _mistakes(page: str) -> list[str]:
    body = re.search(r'<section id="mistakes">(.*?)</section>', page, re.S).group(1)
    return re.findall(r"<figure>(.*?)</figure>", body, re.S)


def test_gallery_of_in_memory_images_with_grad_cam_and_of_an_export_without(tiny_best, tmp_path, image_of_class):
    """Images with no file (digits, CIFAR by name) go to Grad-CAM as PIL images; an export shows them alone."""
    import numpy as np
    import torch

    from imgclf import export
    from imgclf.data.sources import Split
    from imgclf.infer.runtime import open_model

    rng = np.random.default_rng(0)
    labels = torch.tensor([i % 3 for i in range(6)])
    arrays = np.stack([np.asarray(image_of_class(int(c), 16, rng=rng)) for c in labels])
    split = Split("val", labels.tolist(), arrays=arrays, ids=[f"mem:{i}" for i in range(6)])
    # every image wrong, image i with logit i + 1 for the class after its own: image 5 the surest mistake
    logits = torch.nn.functional.one_hot((labels + 1) % 3, 3).float() * torch.arange(1.0, 7.0)[:, None]
    ts = export(tiny_best, "torchscript", out=str(tmp_path / "m.ts"), verify_images=6)["out"]
    for weights, per_card in ((tiny_best, 2), (ts, 1)):
        ev = tmp_path / f"eval-{per_card}"
        ev.mkdir()
        (ev / "eval.json").write_text(
            json.dumps({"split": "val", "weights": weights, "classes": ["cat", "dog", "fox"]})
        )
        runner = open_model(weights, device="cpu")
        page = open(build_report(str(ev), predictions=(logits, labels, split, runner)), encoding="utf-8").read()
        cards = _mistakes(page)
        assert len(cards) == 6
        assert "mem:5" in cards[0] and "mem:0" in cards[-1]  # surest first
        assert 'true <b>fox</b>, predicted <b class="bad">cat</b>' in cards[0]
        assert all(c.count("<img ") == per_card and 'class="pixelated"' in c for c in cards)
        assert ("no gradients" in page) == (per_card == 1)


def test_confused_pairs_largest_first_with_the_share_of_the_true_class():
    pairs = confused_pairs([[5, 3, 2], [0, 9, 1], [4, 0, 6]], ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "a", 4),
        ("a", "b", 3),
        ("a", "c", 2),
        ("b", "c", 1),
    ]
    assert pairs[0]["share"] == pytest.approx(0.4)


def test_export_parity_and_bench_latency_are_in_the_exports_table(tiny_run, tmp_path):
    from imgclf import export

    run = _copy_run(tiny_run, tmp_path)
    r = export(os.path.join(run, "best.pt"), "torchscript", verify_images=12)
    record = json.load(open(r["out"] + ".json"))  # the verification record beside the export
    assert record["verification"]["top1_kept"] == record["verification"]["images"] == 12
    rows = [{"input": r["out"], "format": "torchscript", "batch_size": 1, "latency_p50_ms": 1.25}]
    with open(os.path.join(run, "bench.json"), "w") as f:
        json.dump(rows, f)
    page = open(build_report(run), encoding="utf-8").read()
    assert _sections(page)["exports"] == "shown"
    assert "<td>best.ts</td><td>torchscript</td>" in page
    assert f"{record['verification']['max_abs_diff']:.3g}" in page and "12/12 (100.0%)" in page
    assert "batch 1: 1.2 ms" in page or "batch 1: 1.3 ms" in page


def test_cli_rebuilds_it_and_a_bad_folder_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    assert main(["report", run]) == 0
    assert capsys.readouterr().out.strip() == os.path.join(run, REPORT_NAME)
    for bad in (tmp_path / "nope", tmp_path):
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imgclf: error:"), err
    assert not (tmp_path / REPORT_NAME).exists()


# --------------------------------------------------------------------------------------------- in a browser


def open_in_chromium(page_path: str, screenshot: str, click: str | None = None) -> dict:
    """Open `page_path` as file:// in headless Chromium: every request and console message, each <img>'s
    naturalWidth, the first column of table `click` before and after a click on its second header and after two
    clicks on its first, and a full-page screenshot."""
    seen: dict = {"requests": [], "console": [], "errors": []}
    with chromium_page({"width": 1280, "height": 900}) as page:
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("console", lambda m: seen["console"].append((m.type, m.text)))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.goto("file://" + os.path.abspath(page_path))
        page.wait_for_load_state("load")
        seen["widths"] = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
        if click:
            col = f"Array.from(document.querySelectorAll('{click} tbody tr')).map(r => r.cells[0].textContent)"
            seen["before"] = page.evaluate(col)
            page.click(f"{click} th:nth-child(2)")
            seen["after"] = page.evaluate(col)
            page.click(f"{click} th:nth-child(1)")  # by name, ascending
            page.click(f"{click} th:nth-child(1)")  # and again: descending
            seen["by_name_descending"] = page.evaluate(col)
        page.screenshot(path=screenshot, full_page=True)
    return seen


def check_in_browser(seen: dict, screenshot: str) -> None:
    assert not seen["errors"], seen["errors"]
    assert not [c for c in seen["console"] if c[0] in ("error", "warning")], seen["console"]
    assert seen["requests"] and all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    assert seen["widths"] and all(w and w > 0 for w in seen["widths"]), seen["widths"]
    assert os.path.getsize(screenshot) > 20_000
    with open(screenshot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@needs_chromium
def test_report_in_headless_chromium(tiny_run, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    page = build_report(_copy_run(tiny_run, tmp_path))
    shot = str(tmp_path / "report.png")
    seen = open_in_chromium(page, shot, click="#per-class")
    check_in_browser(seen, shot)
    # precision is the second column: sorted ascending by it, the order of the classes changes (or they tie)
    assert sorted(seen["after"]) == sorted(seen["before"]) and len(seen["after"]) == 3
    html_page = open(page, encoding="utf-8").read()
    precision = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"<tr><td>(\w+)</td><td class='num' data-v='([^']+)'", html_page)
    }
    assert [precision[c] for c in seen["after"]] == sorted(precision.values())
    assert seen["before"] == ["cat", "dog", "fox"]  # the model's class order
    assert seen["by_name_descending"] == ["fox", "dog", "cat"]  # the order changed


def test_an_unreadable_results_json_is_left_out_with_one_warning_line(tiny_run, tmp_path, capsys):
    """Issue 22, defect 9: `imgclf report` on a run whose results.json is not JSON wrote the page and said
    nothing. Now one warning line names the file and that it was left out; the page is still built from the
    other files (exit 0) and says so; a folder with nothing else readable is one line and exit 2."""
    run = _copy_run(tiny_run, tmp_path)
    results = os.path.join(run, "results.json")
    for content in (b"{not json", b"\xff\xfe\x00binary", b"[1, 2]"):
        with open(results, "wb") as fh:
            fh.write(content)
        assert main(["report", run]) == 0
        cap = capsys.readouterr()
        assert cap.out.strip() == os.path.join(run, REPORT_NAME)
        warned = [ln for ln in cap.err.splitlines() if "results.json" in ln]
        assert len(warned) == 1 and "left out" in warned[0] and results in warned[0], cap.err
        assert "Traceback" not in cap.err
        got = _sections(open(os.path.join(run, REPORT_NAME), encoding="utf-8").read())
        assert got["data"] == got["curves"] == got["confusion"] == "shown"
        assert "results.json: not readable" in open(os.path.join(run, REPORT_NAME), encoding="utf-8").read()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "results.json").write_text("{not json")
    assert main(["report", str(alone)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error: nothing to report") and "results.json" in err[0], err
    assert not (alone / REPORT_NAME).exists()
