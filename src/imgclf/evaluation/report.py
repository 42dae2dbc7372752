"""report.html: one self-contained page for a run or an evaluation folder, to look at rather than read.

`build_report(folder)` fills templates/report.html with what the folder holds: the machine and the data, the
training curves, the confusion matrix and its most-confused pairs, the per-class table (sortable), the
reliability diagram and ECE, the most confident mistakes with their Grad-CAM, the data check's findings and the
exports made next to the checkpoint with their parity (and speed, where a bench JSON is there). Every image is
inlined as a data: URI and the CSS and the few lines of JS are in the page, so it opens from a file, offline,
and makes no request (its Content-Security-Policy forbids any). A section whose data is absent is one line
saying why; a section that fails to build is that line too (with the error), never a failed report.

Training (rank 0, after results.json) and `evaluate` (with plots) call it; `imgclf report FOLDER` rebuilds it.
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import json
import logging
import os
import shutil
import string
import tempfile
import time
from dataclasses import dataclass, field

from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "report.html")
GALLERY_SIZE = 12  # the most confident mistakes shown with their Grad-CAM
CHECK_MAX_FILES = 20_000  # a data check decodes every image: above this many files the report does not run it
PAIRS_SHOWN = 10
THUMB_SIDE = 288  # pixels, the longer side of each gallery image (shown at 144 px: sharp on a 2x screen)


@dataclass
class Folder:
    """What a run or evaluation folder holds, read once."""

    path: str
    kind: str  # "run" or "evaluation"
    results: dict | None = None
    config: dict | None = None
    eval: dict | None = None
    weights: str | None = None
    cache: dict = field(default_factory=dict)  # computed once, shared by the sections (predictions)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))


class Missing(Exception):
    """A section has no data: its message is the one line the page shows instead."""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def open_folder(path: str) -> Folder:
    """The folder as a run (results.json, config.yaml or metrics.csv) or an evaluation (eval.json); a
    UsageError for anything else."""
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a folder"
        raise UsageError(f"'{path}' {what}: pass a run folder (runs/NAME) or an evaluation folder (eval-SPLIT)")
    f = Folder(os.path.abspath(path), "run")
    if f.has("eval.json"):
        f.kind, f.eval = "evaluation", _read_json(f.file("eval.json"))
        if f.eval is None:
            raise UsageError(f"'{f.file('eval.json')}' is not readable JSON: run `imgclf evaluate` again")
        f.weights = f.eval.get("weights")
        return f
    if not any(f.has(n) for n in ("results.json", "config.yaml", "metrics.csv")):
        raise UsageError(
            f"'{path}' holds neither results.json, config.yaml, metrics.csv (a run) nor eval.json (an evaluation): "
            "pass runs/NAME or an eval-SPLIT folder"
        )
    f.results = _read_json(f.file("results.json")) if f.has("results.json") else None
    if f.has("config.yaml"):
        import yaml

        with open(f.file("config.yaml"), encoding="utf-8") as fh:
            f.config = yaml.safe_load(fh) or {}
    f.weights = next((f.file(n) for n in ("best.pt", "last.pt") if f.has(n)), None)
    return f


# --------------------------------------------------------------------------------------------- images


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="{data_uri(data, mime)}">'


def _png_file(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        return _img(f.read(), alt)


def _drawn(draw, *args, alt: str) -> str:
    """A figure of plots.py (which writes a file) drawn into a scratch folder and inlined."""
    tmp = tempfile.mkdtemp(prefix="imgclf-report-")
    try:
        out = os.path.join(tmp, "figure.png")
        draw(*args, out)
        return _png_file(out, alt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pil(image, *, max_side: int = THUMB_SIDE) -> tuple[str, bool]:
    """(an <img> of a PIL image, scaled down to `max_side`, whether it is tiny and drawn pixelated)."""
    from imgclf.evaluation.explain import shrink

    small = shrink(image.convert("RGB"), max_side)
    buf = io.BytesIO()
    tiny = max(small.size) < 96
    if tiny:  # a 32 px CIFAR image: lossless, and the browser enlarges it without blur
        small.save(buf, format="PNG")
        return _img(buf.getvalue(), "image", cls="pixelated"), True
    small.save(buf, format="JPEG", quality=85)
    return _img(buf.getvalue(), "image", "image/jpeg", cls=""), False


# --------------------------------------------------------------------------------------------- predictions


def _data_of(f: Folder) -> str | None:
    if f.kind == "evaluation":
        return f.eval.get("data")
    return (f.config or {}).get("data")


def predictions(f: Folder) -> dict:
    """{"logits", "labels", "split", "classes", "runner"} on the folder's split (a run: validation, with its best
    checkpoint; an evaluation: its split, with its weights and --tta), computed once."""
    if "pred" in f.cache:
        return f.cache["pred"]
    if not f.weights or not os.path.isfile(f.weights):
        raise Missing(f"the weights ({f.weights or 'best.pt'}) are not there to compute the predictions from")
    from imgclf.data.feed import make_feed
    from imgclf.data.pipeline import default_workers
    from imgclf.infer.logits import align_classes, infer
    from imgclf.infer.runtime import open_model

    split = f.eval.get("split", "val") if f.kind == "evaluation" else "val"
    runner = open_model(f.weights, device="auto", tta=(f.eval or {}).get("tta"))
    src, s = _open_split(runner, _data_of(f), split)
    mapping = align_classes(src.classes, runner.classes, src.location)
    feed, _ = make_feed(s, runner.preprocess, cache="auto", workers=default_workers(), desc=f"report {split}")
    import torch

    logits, labels = infer(runner, feed.batches(), desc=f"report {split}")
    labels = torch.as_tensor(mapping, dtype=torch.long)[labels]
    f.cache["pred"] = {"logits": logits, "labels": labels, "split": feed.split, "runner": runner}
    return f.cache["pred"]


def _open_split(runner, data: str | None, split: str):
    """The split the folder was made on: the model's recorded data opened as its training opened it when that
    is where `data` points (an evaluation records the resolved location, which for cifar10 is not a name
    open_source takes), else `data` itself."""
    from imgclf.core.errors import DataError
    from imgclf.infer.logits import open_model_data

    if runner.config.get("data"):
        try:
            src, s = open_model_data(runner.config, None, split)
        except DataError:  # the training data moved: what the evaluation names may still be there
            if data is None:
                raise
        else:
            if data is None or os.path.abspath(str(src.location)) == os.path.abspath(str(data)):
                return src, s
    return open_model_data(runner.config, data, split)


def set_predictions(f: Folder, logits, labels, split, runner=None) -> None:
    """Predictions already computed by the caller (evaluate), so that the report does not compute them again."""
    f.cache["pred"] = {"logits": logits, "labels": labels, "split": split, "runner": runner}


def _metrics(f: Folder) -> dict:
    """eval.json's metrics, or (a run) those of its best checkpoint on validation, computed here."""
    if f.kind == "evaluation":
        return f.eval
    if "metrics" not in f.cache:
        from imgclf.evaluation.calibration import trust_metrics
        from imgclf.evaluation.metrics import compute_metrics

        p = predictions(f)
        m = compute_metrics(p["logits"], p["labels"], list(p["runner"].classes))
        m["calibration"] = {"temperature": p["runner"].temperature, **trust_metrics(p["logits"], p["labels"])}
        f.cache["metrics"] = m
    return f.cache["metrics"]


# --------------------------------------------------------------------------------------------- sections


def section_machine(f: Folder) -> str:
    from imgclf.compute.machine import machine_report, summary_line

    return (
        f"<p><code>{_e(summary_line(machine_report()))}</code></p>"
        '<p class="note">the machine this page was built on (at the end of a run or an evaluation: the one it ran '
        "on); <code>imgclf env</code> says more</p>"
    )


def _kv(rows: list[tuple[str, object]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v is not None) + "</dl>"


def _split_counts(f: Folder) -> str | None:
    """ "train 245, val 153" from the data source as the run opened it (a listing: no image is read)."""
    cfg = f.config or {}
    if not cfg.get("data"):
        return None
    from imgclf.data.sources import open_source

    try:
        src = open_source(
            cfg["data"],
            data_root=cfg.get("data_root"),
            val_fraction=cfg.get("val_fraction", 0.2),
            seed=cfg.get("seed", 0),
            download=False,
        )
    except Exception as e:  # moved or deleted since the run: the rest of the summary still stands
        return f"not counted ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    origin = " (validation carved from train)" if src.val_origin == "carved" else ""
    return ", ".join(f"{k} {len(v)}" for k, v in sorted(src.splits.items())) + origin


def _left_out_rows(f: Folder) -> list[tuple[str, str, str]]:
    if f.kind == "evaluation":
        return [(f.eval.get("split", ""), r["path"], r["reason"]) for r in f.eval.get("left_out", [])]
    if not f.has("left_out.csv"):
        return []
    with open(f.file("left_out.csv"), newline="", encoding="utf-8") as fh:
        return [(r.get("split", ""), r.get("path", ""), r.get("reason", "")) for r in csv.DictReader(fh)]


def section_data(f: Folder) -> str:
    if f.kind == "evaluation":
        e = f.eval
        rows = [
            ("data", e.get("data")),
            ("split", f"{e.get('split')} ({e.get('num_images')} images)"),
            ("weights", f"{e.get('weights')} ({e.get('format')})"),
            ("classes", f"{len(e.get('classes', []))}: {', '.join(e.get('classes', []))}"),
            ("test-time augmentation", e.get("tta")),
        ]
    else:
        cfg, res = f.config or {}, f.results or {}
        if not cfg and not res:
            raise Missing("no config.yaml or results.json in the run folder")
        classes = res.get("classes") or []
        rows = [
            ("data", cfg.get("data")),
            ("images per split", _split_counts(f)),
            ("classes", f"{len(classes)}: {', '.join(classes)}" if classes else None),
            ("model", res.get("model") or cfg.get("model")),
            ("epochs", f"{res.get('epochs')} (best: {res.get('best_epoch')})" if res else cfg.get("epochs")),
            ("precision", res.get("precision")),
            ("data fingerprint", res.get("data_fingerprint")),
        ]
    left = _left_out_rows(f)
    rows.append(("files left out", len(left)))
    out = _kv(rows)
    if left:
        out += "<table><thead><tr><th>split</th><th>file</th><th>reason</th></tr></thead><tbody>"
        out += "".join(f"<tr><td>{_e(s)}</td><td>{_e(p)}</td><td>{_e(r)}</td></tr>" for s, p, r in left[:50])
        out += "</tbody></table>" + (f'<p class="note">{len(left) - 50} more not shown</p>' if len(left) > 50 else "")
    return out


def section_curves(f: Folder) -> str:
    if f.kind == "evaluation":
        raise Missing("an evaluation has no training curves (they are in the run's report)")
    if f.has("curves.png"):
        return _png_file(f.file("curves.png"), "training curves")
    if not f.has("metrics.csv"):
        raise Missing("no metrics.csv in the run folder (no epoch finished)")
    from imgclf.evaluation.plots import plot_curves

    with open(f.file("metrics.csv"), newline="", encoding="utf-8") as fh:
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(fh)]
    if not rows:
        raise Missing("metrics.csv has no epoch yet")
    return _drawn(plot_curves, rows, alt="training curves")


def confused_pairs(cm: list[list[int]], classes: list[str], n: int = PAIRS_SHOWN) -> list[dict]:
    """The off-diagonal cells with the most images, largest first: true, predicted, count and the share of the
    true class's images that went there."""
    pairs = []
    for i, row in enumerate(cm):
        total = sum(row)
        for j, c in enumerate(row):
            if i != j and c > 0:
                pairs.append({"true": classes[i], "predicted": classes[j], "count": int(c), "share": c / total})
    pairs.sort(key=lambda p: (-p["count"], -p["share"], p["true"], p["predicted"]))
    return pairs[:n]


def section_confusion(f: Folder) -> str:
    m = _metrics(f)
    cm, classes = m.get("confusion_matrix"), m.get("classes")
    if not cm or not classes:
        raise Missing("no confusion matrix in the metrics")
    if f.has("confusion_matrix.png"):
        picture = _png_file(f.file("confusion_matrix.png"), "confusion matrix")
    else:
        import numpy as np

        from imgclf.evaluation.plots import plot_confusion

        picture = _drawn(plot_confusion, np.asarray(cm), classes, alt="confusion matrix")
    pairs = confused_pairs(cm, classes)
    if pairs:
        table = (
            "<table><thead><tr><th>true</th><th>predicted</th><th class='num'>count</th>"
            "<th class='num'>share of the true class</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{_e(p['true'])}</td><td>{_e(p['predicted'])}</td><td class='num'>{p['count']}</td>"
                f"<td class='num'>{p['share']:.1%}</td></tr>"
                for p in pairs
            )
            + "</tbody></table>"
        )
    else:
        table = "<p>no image was confused: every prediction is right</p>"
    return f'<div class="row"><div>{picture}</div><div><h3>most-confused pairs</h3>{table}</div></div>'


def section_per_class(f: Folder) -> str:
    per = _metrics(f).get("per_class")
    if not per:
        raise Missing("no per-class metrics")
    head = "".join(
        f"<th{' class=num' if k != 'class' else ''}>{k}</th>" for k in ("class", "precision", "recall", "F1", "support")
    )
    body = "".join(
        f"<tr><td>{_e(c)}</td>"
        + "".join(f"<td class='num' data-v='{r[k]}'>{r[k]:.4f}</td>" for k in ("precision", "recall", "f1"))
        + f"<td class='num'>{int(r['support'])}</td></tr>"
        for c, r in per.items()
    )
    m = _metrics(f)
    line = f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {m['num_images']} images"
    if m.get("top5_accuracy") is not None:
        line += f", top-5 {m['top5_accuracy']:.4f}"
    return (
        f"<p>{_e(line)}</p><table class='sortable' id='per-class'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table><p class='note'>click a header to sort</p>"
    )


def section_reliability(f: Folder) -> str:
    c = _metrics(f).get("calibration")
    if not c:
        raise Missing("eval.json has no calibration block (written by an imgclf before ECE was measured)")
    if f.kind == "evaluation" and f.has("reliability.png"):
        picture = _png_file(f.file("reliability.png"), "reliability diagram")
    else:
        from imgclf.evaluation.plots import plot_reliability

        picture = _drawn(plot_reliability, c["reliability"], c["ece"], alt="reliability diagram")
    t = c.get("temperature", 1.0)
    how = f"temperature {t:.4g} (imgclf calibrate)" if t != 1.0 else "not calibrated (imgclf calibrate fits T)"
    rows = "".join(
        f"<tr><td class='num'>{s['threshold']:g}</td><td class='num'>{s['coverage']:.1%}</td>"
        f"<td class='num'>{'-' if s['accuracy'] is None else format(s['accuracy'], '.4f')}</td></tr>"
        for s in c.get("selective", [])
    )
    table = (
        "<table><thead><tr><th class='num'>confidence at least</th><th class='num'>coverage</th>"
        f"<th class='num'>accuracy there</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return (
        f"<p>ECE ({c.get('ece_bins', 15)} bins) <b>{c['ece']:.4f}</b>, {_e(how)}</p>"
        f'<div class="row"><div>{picture}</div><div>{table}</div></div>'
    )


def worst_mistakes(logits, labels, n: int = GALLERY_SIZE) -> list[tuple[int, int, float]]:
    """(image index, predicted class, probability) of the `n` misclassified images the model was surest of."""
    prob = logits.float().softmax(1)
    conf, pred = prob.max(1)
    wrong = (pred != labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True, stable=True)][:n]
    return [(int(i), int(pred[i]), float(conf[i])) for i in order]


def _item(split, i: int):
    """Image i of a split as Explainer and Predictor take it: its path, or a PIL image for in-memory data."""
    if split.paths is not None:
        return split.paths[i]
    from PIL import Image

    return Image.fromarray(split.arrays[i])


def section_gallery(f: Folder) -> str:
    p = predictions(f)
    classes = list(p["runner"].classes) if p["runner"] is not None else list(_metrics(f)["classes"])
    worst = worst_mistakes(p["logits"], p["labels"])
    if not worst:
        return "<p>no mistakes: every image of the split is classified right</p>"
    split = p["split"]
    items = [_item(split, i) for i, _, _ in worst]
    is_ckpt = f.weights and (p["runner"] is None or p["runner"].format == "checkpoint")
    cams, note = None, ""
    if is_ckpt:
        from imgclf.evaluation.explain import Explainer, fit, overlay

        ex = Explainer(f.weights)
        cams = ex.explain(items, targets=[classes[k] for _, k, _ in worst])
        layer = ex.layer.describe() if ex.layer else "no layer"
        note = f"Grad-CAM for the predicted (wrong) class, on {layer}: where the model found its evidence"
    else:
        note = "an exported model gives no gradients: the images without Grad-CAM"
    cards = []
    for n, ((i, k, prob), item) in enumerate(zip(worst, items)):
        true = classes[int(p["labels"][i])]
        name = split.describe(i)
        pictures = []
        r = cams[n] if cams else None
        if r is not None and "error" not in r:
            image, _ = _pil(r["image"])
            pictures += [image, _pil(overlay(*fit(r["image"], r["cam"], r["box"], THUMB_SIDE)))[0]]
        else:
            from imgclf.data.images import load_image

            pictures.append(_pil(item if not isinstance(item, str) else load_image(item))[0])
        cards.append(
            f'<figure><div class="pair">{"".join(pictures)}</div><figcaption>'
            f'true <b>{_e(true)}</b>, predicted <b class="bad">{_e(classes[k])}</b> ({prob:.3f})<br>'
            f'<span class="note">{_e(os.path.basename(name) if split.paths is not None else name)}</span>'
            "</figcaption></figure>"
        )
    return f'<p class="note">{_e(note)}; surest first</p><div class="gallery">{"".join(cards)}</div>'


def _count_files(folder: str, limit: int) -> int:
    """Files under `folder`, counted up to `limit` + 1 (enough to know it is too many)."""
    n = 0
    for _, _, files in os.walk(folder):
        n += len(files)
        if n > limit:
            break
    return n


def _check_json(f: Folder) -> dict | None:
    for path in sorted(glob.glob(os.path.join(f.path, "*check*.json"))):
        d = _read_json(path)
        if isinstance(d, dict) and {"errors", "warnings"} <= set(d):
            d["_file"] = os.path.basename(path)
            return d
    return None


def section_check(f: Folder) -> str:
    found = _check_json(f)
    where = f"from {found['_file']} in this folder" if found else ""
    if found is None:
        data = _data_of(f)
        if not data or not os.path.exists(str(data)):
            raise Missing(
                f"the data check is for image folders and CSV files, and the data ({data or 'not recorded'}) is "
                "not one here"
            )
        if os.path.isdir(data) and _count_files(data, CHECK_MAX_FILES) > CHECK_MAX_FILES:
            raise Missing(
                f"{data} holds over {CHECK_MAX_FILES:,} files, too many to decode for a report: run "
                f"`imgclf check {data} --json > {os.path.join(f.path, 'check.json')}` and rebuild with "
                f"`imgclf report {f.path}`"
            )
        from imgclf.data.check import check_data

        found = check_data(str(data)).to_dict()
        where = f"imgclf check {data}, run for this page"
    rows = [("error", x) for x in found.get("errors", [])] + [("warning", x) for x in found.get("warnings", [])]
    s = found.get("summary") or {}
    summary = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, (int, float, str)))
    out = f'<p class="note">{_e(where)}</p>' + (f"<p>{_e(summary)}</p>" if summary else "")
    if not rows:
        return out + "<p>no findings: every file decodes, no duplicates, no leaks, no empty class</p>"
    out += "<table><thead><tr><th>severity</th><th>kind</th><th>detail</th><th>files</th></tr></thead><tbody>"
    for sev, x in rows:
        paths = x.get("paths") or []
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        out += (
            f"<tr><td class='{'bad' if sev == 'error' else ''}'>{sev}</td><td>{_e(x.get('kind'))}</td>"
            f"<td>{_e(x.get('detail'))}</td><td>{_e(shown)}</td></tr>"
        )
    return out + "</tbody></table>"


def _exports(folder: str, stem: str) -> list[tuple[str, str]]:
    """(path, format) of the files `imgclf export` writes next to checkpoint STEM.pt by default."""
    from imgclf.core.formats import FORMATS

    found, taken = [], set()
    for fmt in sorted(FORMATS.values(), key=lambda x: -len(x.suffix)):  # .int8.onnx before .onnx
        path = os.path.join(folder, stem + fmt.suffix)
        if os.path.isfile(path) and path not in taken:
            taken.add(path)
            found.append((path, fmt.name))
    return sorted(found)


def _bench_rows(folder: str) -> list[dict]:
    """The rows of any `imgclf bench --json` output saved in the folder (a file named *bench*.json)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*bench*.json"))):
        d = _read_json(path)
        if isinstance(d, list):
            rows += [r for r in d if isinstance(r, dict) and "latency_p50_ms" in r and "input" in r]
    return rows


def section_exports(f: Folder) -> str:
    from imgclf.core.fileio import human_size

    if not f.weights:
        raise Missing("no checkpoint in the folder, so no export next to it")
    folder = os.path.dirname(os.path.abspath(f.weights))
    stem = os.path.splitext(os.path.basename(f.weights))[0]
    if f.kind == "evaluation" and f.eval.get("format") not in (None, "checkpoint"):
        stem = os.path.basename(f.weights).split(".")[0]
    files = _exports(folder, stem)
    if not files:
        raise Missing(f"no file written by `imgclf export` next to {os.path.join(folder, stem + '.pt')}")
    bench = _bench_rows(folder) + (_bench_rows(f.path) if f.path != folder else [])
    rows = []
    for path, fmt in files:
        v = (_read_json(path + ".json") or {}).get("verification") or {}
        speed = "; ".join(
            f"batch {r['batch_size']}: {r['latency_p50_ms']:.1f} ms"
            for r in bench
            if os.path.basename(str(r["input"])) == os.path.basename(path)
        )
        diff = f"{v['max_abs_diff']:.3g}" if "max_abs_diff" in v else "not recorded"
        agree = f"{v['top1_kept']}/{v['images']} ({v['top1_agreement']:.1%})" if "top1_kept" in v else "not recorded"
        rows.append(
            f"<tr><td>{_e(os.path.basename(path))}</td><td>{_e(fmt)}</td>"
            f"<td class='num' data-v='{os.path.getsize(path)}'>{_e(human_size(os.path.getsize(path)))}</td>"
            f"<td class='num'>{_e(diff)}</td><td class='num'>{_e(agree)}</td><td>{_e(v.get('data', ''))}</td>"
            f"<td>{_e(speed or '-')}</td></tr>"
        )
    notes = []
    if any("not recorded" in r for r in rows):
        notes.append("parity is read from FILE.json, which `imgclf export` writes beside each export: export again")
    if not bench:
        notes.append(
            "latency: save `imgclf bench FILES --json > bench.json` in this folder and rebuild (the report runs no "
            "benchmark)"
        )
    return (
        "<table class='sortable'><thead><tr><th>file</th><th>format</th><th class='num'>size</th>"
        "<th class='num'>max |logit diff|</th><th class='num'>labels kept</th><th>verified on</th>"
        f"<th>latency p50</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    )


# --------------------------------------------------------------------------------------------- the page

SECTIONS = (
    ("machine", "Machine", section_machine),
    ("data", "Data", section_data),
    ("curves", "Training curves", section_curves),
    ("confusion", "Confusion matrix", section_confusion),
    ("per-class", "Per class", section_per_class),
    ("reliability", "Calibration", section_reliability),
    ("mistakes", "Most confident mistakes", section_gallery),
    ("check", "Data check", section_check),
    ("exports", "Exports: parity and speed", section_exports),
)


def _section(f: Folder, key: str, title: str, fill) -> tuple[str, bool]:
    """(the section's HTML, whether it has content); a missing or failing one is one line saying why."""
    try:
        body = fill(f)
    except Missing as e:
        return f'<section class="missing" id="{key}"><h2>{_e(title)}</h2><p>left out: {_e(e)}</p></section>', False
    except Exception as e:  # a convenience page: one section's failure never costs the others
        log.warning("report: the %s section could not be built: %s: %s", key, type(e).__name__, e)
        first = str(e).splitlines()[0] if str(e) else ""
        why = f"could not be built ({type(e).__name__}: {first})"
        return f'<section class="missing" id="{key}"><h2>{_e(title)}</h2><p>left out: {_e(why)}</p></section>', False
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>', True


def render(f: Folder) -> str:
    """The page for folder `f`, as a string."""
    parts, shown = [], []
    for key, title, fill in SECTIONS:
        part, ok = _section(f, key, title, fill)
        parts.append(part)
        if ok:
            shown.append(f'<a href="#{key}">{_e(title)}</a>')
    name = os.path.basename(f.path)
    if f.kind == "evaluation":
        name = f"{os.path.basename(os.path.dirname(f.path))}/{name}"
    title = f"imgclf {f.kind}: {name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    header = (
        f"<header><h1>{_e(title)}</h1><p>{_e(f.path)} &middot; built {_e(stamp)} &middot; rebuild with "
        f"<code>imgclf report {_e(f.path)}</code></p></header><nav>{''.join(shown)}</nav>"
    )
    with open(TEMPLATE, encoding="utf-8") as fh:
        page = string.Template(fh.read())
    return page.substitute(title=_e(title), body=header + "<main>" + "".join(parts) + "</main>")


def build_report(path: str, *, predictions: tuple | None = None) -> str:
    """Write PATH/report.html for a run folder (runs/NAME) or an evaluation folder (eval-SPLIT) and return its
    path. `predictions`: (logits, labels in the model's class order, the Split they are of, the runner), when the
    caller has them already (evaluate), so that they are not computed again."""
    f = open_folder(path)
    if predictions is not None:
        set_predictions(f, *predictions)
    page = render(f)
    out = f.file(REPORT_NAME)
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write(page)
    log.info("wrote %s", out)
    return out
