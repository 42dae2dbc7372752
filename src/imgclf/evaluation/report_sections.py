"""The sections of report.html (report.py), each a function of the folder that returns its HTML, or raises
`Missing` with the one line the page shows instead; and the HTML they are made of (images inlined as data: URIs)."""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from imgclf.compute.machine import machine_report, summary_line
from imgclf.core.escape import csv_value
from imgclf.core.fileio import human_size
from imgclf.core.formats import FORMATS
from imgclf.data.check import check_data
from imgclf.data.fixes import locate
from imgclf.data.images import load_image
from imgclf.data.sources import open_source
from imgclf.evaluation.explain import Explainer, fit, overlay, shrink
from imgclf.evaluation.plots import plot_confusion, plot_curves, plot_reliability
from imgclf.evaluation.report_folder import Folder, Missing, data_of, folder_metrics, predictions, read_json

GALLERY_SIZE = 12  # the most confident mistakes shown with their Grad-CAM
CHECK_MAX_FILES = 20_000  # a data check decodes every image: above this many files the report does not run it
PAIRS_SHOWN = 10
THUMB_SIDE = 288  # pixels, the longer side of each gallery image (shown at 144 px: sharp on a 2x screen)


# --------------------------------------------------------------------------------------------- HTML


def escape(x) -> str:
    return html.escape(str(x), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{escape(alt)}" src="{data_uri(data, mime)}">'


def _png_file(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        return _img(f.read(), alt)


def _drawn(draw, *args, alt: str, **options) -> str:
    """A figure of plots.py (which writes a file) drawn into a scratch folder and inlined; `options`: the figure's
    keyword arguments (axis names)."""
    tmp = tempfile.mkdtemp(prefix="imgclf-report-")
    try:
        out = os.path.join(tmp, "figure.png")
        draw(*args, out, **options)
        return _png_file(out, alt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pil(image, *, max_side: int = THUMB_SIDE) -> tuple[str, bool]:
    """(an <img> of a PIL image, scaled down to `max_side`, whether it is tiny and drawn pixelated)."""
    small = shrink(image.convert("RGB"), max_side)
    buf = io.BytesIO()
    tiny = max(small.size) < 96
    if tiny:  # a 32 px CIFAR image: lossless, and the browser enlarges it without blur
        small.save(buf, format="PNG")
        return _img(buf.getvalue(), "image", cls="pixelated"), True
    small.save(buf, format="JPEG", quality=85)
    return _img(buf.getvalue(), "image", "image/jpeg", cls=""), False


# --------------------------------------------------------------------------------------------- sections


def section_machine(f: Folder) -> str:
    return (
        f"<p><code>{escape(summary_line(machine_report()))}</code></p>"
        '<p class="note">the machine this page was built on (at the end of a run or an evaluation: the one it ran '
        "on); <code>imgclf env</code> says more</p>"
    )


def _kv(rows: list[tuple[str, object]]) -> str:
    return (
        '<dl class="kv">'
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows if v is not None)
        + "</dl>"
    )


def _split_counts(f: Folder) -> str | None:
    """ "train 245, val 153" from the data source as the run opened it (a listing: no image is read)."""
    cfg = f.config or {}
    if not cfg.get("data"):
        return None
    try:
        src = open_source(
            cfg["data"],
            data_root=cfg.get("data_root"),
            val_fraction=cfg.get("val_fraction", 0.2),
            seed=cfg.get("seed", 0),
            download=False,
            group_by=cfg.get("group_by"),
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
        rows = csv.DictReader(fh)
        return [(r.get("split", ""), csv_value(r.get("path", "")), csv_value(r.get("reason", ""))) for r in rows]


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
            raise Missing("; ".join(f.left_out) or "no config.yaml or results.json in the run folder")
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
    rows.extend(("not read", why) for why in f.left_out)
    out = _kv(rows)
    if left:
        out += "<table><thead><tr><th>split</th><th>file</th><th>reason</th></tr></thead><tbody>"
        out += "".join(
            f"<tr><td>{escape(s)}</td><td>{escape(p)}</td><td>{escape(r)}</td></tr>" for s, p, r in left[:50]
        )
        out += "</tbody></table>" + (f'<p class="note">{len(left) - 50} more not shown</p>' if len(left) > 50 else "")
    return out


def section_curves(f: Folder) -> str:
    if f.kind == "evaluation":
        raise Missing("an evaluation has no training curves (they are in the run's report)")
    if f.has("curves.png"):
        return _png_file(f.file("curves.png"), "training curves")
    if not f.has("metrics.csv"):
        raise Missing("no metrics.csv in the run folder (no epoch finished)")
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
    m = folder_metrics(f)
    cm, classes = m.get("confusion_matrix"), m.get("classes")
    if not cm or not classes:
        raise Missing("no confusion matrix in the metrics")
    if f.has("confusion_matrix.png"):
        picture = _png_file(f.file("confusion_matrix.png"), "confusion matrix")
    else:
        picture = _drawn(plot_confusion, np.asarray(cm), classes, alt="confusion matrix")
    pairs = confused_pairs(cm, classes)
    if pairs:
        table = (
            "<table><thead><tr><th>true</th><th>predicted</th><th class='num'>count</th>"
            "<th class='num'>share of the true class</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{escape(p['true'])}</td><td>{escape(p['predicted'])}</td><td class='num'>{p['count']}</td>"
                f"<td class='num'>{p['share']:.1%}</td></tr>"
                for p in pairs
            )
            + "</tbody></table>"
        )
    else:
        table = "<p>no image was confused: every prediction is right</p>"
    return f'<div class="row"><div>{picture}</div><div><h3>most-confused pairs</h3>{table}</div></div>'


def section_per_class(f: Folder) -> str:
    per = folder_metrics(f).get("per_class")
    if not per:
        raise Missing("no per-class metrics")
    head = "".join(
        f"<th{' class=num' if k != 'class' else ''}>{k}</th>" for k in ("class", "precision", "recall", "F1", "support")
    )
    body = "".join(
        f"<tr><td>{escape(c)}</td>"
        + "".join(f"<td class='num' data-v='{r[k]}'>{r[k]:.4f}</td>" for k in ("precision", "recall", "f1"))
        + f"<td class='num'>{int(r['support'])}</td></tr>"
        for c, r in per.items()
    )
    m = folder_metrics(f)
    line = f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {m['num_images']} images"
    if m.get("top5_accuracy") is not None:
        line += f", top-5 {m['top5_accuracy']:.4f}"
    return (
        f"<p>{escape(line)}</p><table class='sortable' id='per-class'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table><p class='note'>click a header to sort</p>"
    )


def section_reliability(f: Folder) -> str:
    c = folder_metrics(f).get("calibration")
    if not c:
        raise Missing("eval.json has no calibration block (written by an imgclf before ECE was measured)")
    if f.kind == "evaluation" and f.has("reliability.png"):
        picture = _png_file(f.file("reliability.png"), "reliability diagram")
    else:
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
        f"<p>ECE ({c.get('ece_bins', 15)} bins) <b>{c['ece']:.4f}</b>, {escape(how)}</p>"
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
    return Image.fromarray(split.arrays[i])


def section_gallery(f: Folder) -> str:
    p = predictions(f)
    classes = list(p["runner"].classes) if p["runner"] is not None else list(folder_metrics(f)["classes"])
    worst = worst_mistakes(p["logits"], p["labels"])
    if not worst:
        return "<p>no mistakes: every image of the split is classified right</p>"
    split = p["split"]
    items = [_item(split, i) for i, _, _ in worst]
    is_ckpt = f.weights and (p["runner"] is None or p["runner"].format == "checkpoint")
    cams, note = None, ""
    if is_ckpt:
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
            pictures.append(_pil(item if not isinstance(item, str) else load_image(item))[0])
        cards.append(
            f'<figure><div class="pair">{"".join(pictures)}</div><figcaption>'
            f'true <b>{escape(true)}</b>, predicted <b class="bad">{escape(classes[k])}</b> ({prob:.3f})<br>'
            f'<span class="note">{escape(os.path.basename(name) if split.paths is not None else name)}</span>'
            "</figcaption></figure>"
        )
    return f'<p class="note">{escape(note)}; surest first</p><div class="gallery">{"".join(cards)}</div>'


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
        d = read_json(path)
        if isinstance(d, dict) and {"errors", "warnings"} <= set(d):
            d["_file"] = os.path.basename(path)
            return d
    return None


def section_check(f: Folder) -> str:
    """The data checks: check.json in the folder (`imgclf check --json`, or `check --deep`'s), else a check run
    for the page; a table per finding kind with a thumbnail of each image, its path, the label given, the label
    suggested, the score and the group, at most CHECK_PER_KIND rows a kind."""
    found = _check_json(f)
    where = f"from {found['_file']} in this folder" if found else ""
    if found is None:
        data = data_of(f)
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
        found = check_data(str(data)).to_dict()
        where = f"imgclf check {data}, run for this page"
    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for sev, key in (("error", "errors"), ("warning", "warnings")):
        for x in found.get(key) or []:
            by_kind.setdefault(str(x.get("kind")), []).append((sev, x))
    s = found.get("summary") or {}
    summary = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, (int, float, str)))
    out = f'<p class="note">{escape(where)}</p>' + (f"<p>{escape(summary)}</p>" if summary else "")
    if not by_kind:
        return out + "<p>no findings: every file decodes, no duplicates, no leaks, no empty class</p>"
    thumbs = _Thumbs(found.get("data"), f.cache.get("images"))
    return out + "".join(_kind_table(kind, rows, thumbs) for kind, rows in by_kind.items())


CHECK_PER_KIND = 24  # findings shown per kind; check.json has them all
CHECK_THUMBS = 4  # images shown per finding (a cluster of near-duplicates may hold many)
CHECK_THUMB_SIDE = 96  # pixels, the longer side of a finding's thumbnail


class _Thumbs:
    """A finding's images as thumbnails: files under the check's data folder, or in-memory images the caller
    gave (`images`: {id: H x W x 3 uint8}); each decoded once."""

    def __init__(self, data: str | None, images: dict | None):
        self.data, self.images, self.done = data, images or {}, {}

    def __call__(self, shown: str) -> str:
        if shown not in self.done:
            self.done[shown] = self._make(shown)
        return self.done[shown]

    def _make(self, shown: str) -> str:
        if shown in self.images:
            image = Image.fromarray(np.asarray(self.images[shown], dtype=np.uint8))
        else:
            path = locate(shown, self.data)
            if path is None or not os.path.isfile(path):
                return '<span class="note">no image</span>'
            try:
                image = load_image(path)
            except Exception:  # an unreadable file is what some findings are about
                return '<span class="note">unreadable</span>'
        return _pil(image, max_side=CHECK_THUMB_SIDE)[0]


def _kind_table(kind: str, rows: list[tuple[str, dict]], thumbs) -> str:
    """One finding kind: its findings (the first CHECK_PER_KIND), each with its images' thumbnails."""
    review = any(x.get(k) is not None for _, x in rows for k in ("label", "suggested", "score", "group"))
    head = ["severity", "images", "files", "detail"] + (["label", "suggested", "score", "group"] if review else [])
    body = []
    for sev, x in rows[:CHECK_PER_KIND]:
        paths = [str(p) for p in x.get("paths") or []]
        pics = "".join(thumbs(p) for p in paths[:CHECK_THUMBS])
        more = len(paths) - CHECK_THUMBS
        files = "<br>".join(escape(p) for p in paths[:CHECK_THUMBS]) + (f"<br>and {more} more" if more > 0 else "")
        cells = [f"<td class='{'bad' if sev == 'error' else ''}'>{sev}</td>", f"<td>{pics}</td>", f"<td>{files}</td>"]
        cells.append(f"<td>{escape(x.get('detail', ''))}</td>")
        if review:
            score = x.get("score")
            cells += [f"<td>{escape(x.get(k) if x.get(k) is not None else '')}</td>" for k in ("label", "suggested")]
            cells.append(f"<td>{'' if score is None else f'{float(score):.3g}'}</td>")
            cells.append(f"<td>{escape(x.get('group') or '')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    rest = len(rows) - CHECK_PER_KIND
    tail = f'<p class="note">and {rest} more (check.json lists them all)</p>' if rest > 0 else ""
    n = len(rows)
    return (
        f"<h3>{escape(kind)} ({n} finding{'s' * (n != 1)})</h3><table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
        + tail
    )


def _exports(folder: str, stem: str) -> list[tuple[str, str]]:
    """(path, format) of the files `imgclf export` writes next to checkpoint STEM.pt by default."""
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
        d = read_json(path)
        if isinstance(d, list):
            rows += [r for r in d if isinstance(r, dict) and "latency_p50_ms" in r and "input" in r]
    return rows


def section_exports(f: Folder) -> str:
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
        v = (read_json(path + ".json") or {}).get("verification") or {}
        speed = "; ".join(
            f"batch {r['batch_size']}: {r['latency_p50_ms']:.1f} ms"
            for r in bench
            if os.path.basename(str(r["input"])) == os.path.basename(path)
        )
        diff = f"{v['max_abs_diff']:.3g}" if "max_abs_diff" in v else "not recorded"
        agree = f"{v['top1_kept']}/{v['images']} ({v['top1_agreement']:.1%})" if "top1_kept" in v else "not recorded"
        rows.append(
            f"<tr><td>{escape(os.path.basename(path))}</td><td>{escape(fmt)}</td>"
            f"<td class='num' data-v='{os.path.getsize(path)}'>{escape(human_size(os.path.getsize(path)))}</td>"
            f"<td class='num'>{escape(diff)}</td><td class='num'>{escape(agree)}</td><td>{escape(v.get('data', ''))}</td>"
            f"<td>{escape(speed or '-')}</td></tr>"
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
        + "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    )
