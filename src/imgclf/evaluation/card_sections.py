"""The model card's text (card.py gathers the facts, card_results.py makes the numbers' sections): the YAML
metadata Hugging Face's hub reads (library_name, pipeline_tag, tags, datasets, metrics, model-index), then
Hugging Face's sections in their order. Every user string is escaped: `md_text` in prose and tables, `md_code`
for paths, one shell word (`shlex.quote`) or a Python literal in code blocks, one line in the YAML."""

from __future__ import annotations

import os

import yaml

from imgclf.core.artifact import Preprocess
from imgclf.core.escape import md_code, md_text, one_line
from imgclf.core.multilabel import MULTILABEL
from imgclf.evaluation.card_results import (
    Measured,
    calibration_lines,
    confusion_lines,
    headline,
    limitation_lines,
    measurements,
    ood_lines,
    overall_table,
    per_class_table,
    primary,
    robustness_lines,
    shell,
    table,
    verdict,
)
from imgclf.models.checkpoint import task_of, temperature_of

CLASSES_NAMED = 30  # the summary names up to this many classes; the tables name them all
EPOCH_ROWS = 12  # metrics.csv shown whole up to this many epochs; past it the first, the best and the last
# the options a card always shows; the others where they are switched on (not 0, none, false or empty)
CORE_OPTIONS = ("recipe", "model", "pretrained", "img_size", "epochs", "batch_size", "optimizer", "lr")
CORE_OPTIONS += ("weight_decay", "scheduler", "augment", "precision", "seed")
OFF = (None, False, 0, 0.0, "", "none")


def _on(key: str):
    return lambda c: c.get(key) not in OFF


# the other options, each shown where it changed something: (name, when)
OTHER_OPTIONS = (
    ("momentum", lambda c: c.get("optimizer") in ("sgd", "muon")),
    ("muon_lr", lambda c: c.get("optimizer") == "muon"),
    ("muon_momentum", lambda c: c.get("optimizer") == "muon"),
    ("nesterov", _on("nesterov")),
    ("weights_file", _on("weights_file")),
    ("freeze", _on("freeze")),
    ("freeze_epochs", _on("freeze_epochs")),
    ("backbone_lr_scale", lambda c: c.get("backbone_lr_scale", 1.0) != 1.0),
    ("label_smoothing", _on("label_smoothing")),
    ("randaugment", _on("randaugment")),
    ("mixup", _on("mixup")),
    ("cutmix", _on("cutmix")),
    ("balance", _on("balance")),
    ("ema", _on("ema")),
    ("ema_decay", _on("ema")),
    ("accumulate", lambda c: c.get("accumulate", 1) != 1),
    ("clip_grad", _on("clip_grad")),
    ("time_budget", _on("time_budget")),
    ("max_steps", _on("max_steps")),
    ("patience", _on("patience")),
    ("calibrate", _on("calibrate")),
    ("adv_train", _on("adv_train")),
    ("adv_eps", _on("adv_train")),
    ("curriculum", _on("curriculum")),
    ("apply_fixes", _on("apply_fixes")),
    ("group_by", _on("group_by")),
    ("val_fraction", lambda c: True),
    ("task", lambda c: c.get("task") == MULTILABEL),
    ("threshold", lambda c: c.get("task") == MULTILABEL),
    ("pos_weight", lambda c: c.get("task") == MULTILABEL and c.get("pos_weight") not in OFF),
)


def render(f) -> str:
    """The card of `f` (card.CardFacts) as Markdown."""
    ms = measurements(f.results, f.evals)
    parts = [
        front_matter(f, ms),
        summary(f, ms),
        details(f),
        uses(f),
        ["## Bias, risks, and limitations", ""] + limitation_lines(f, ms, ood_record(f)) + recommendations(f),
        get_started(f),
        training_data(f),
        training_procedure(f),
        evaluation(f, ms),
        technical(f),
        citation(f),
    ]
    return "\n".join(line for part in parts for line in part).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ facts


def classes(f) -> list[str]:
    return list(f.ckpt["classes"])


def is_multilabel(f) -> bool:
    return task_of(f.ckpt)[0] == MULTILABEL


def data_location(f) -> str:
    return str((f.results.get("data") or {}).get("location") or f.config.get("data") or "")


def data_name(f) -> str:
    loc = data_location(f)
    return one_line(os.path.basename(os.path.normpath(loc)) or loc or "unknown")


def run_name(f) -> str:
    return one_line(os.path.basename(f.folder))


def has_test(f) -> bool:
    """Whether the run's data has a test split (as listed at the run's end)."""
    return "test" in ((f.results.get("data") or {}).get("counts") or {})


def ood_record(f) -> dict | None:
    entry = f.ckpt.get("ood")
    return entry.get("record") if isinstance(entry, dict) else None


def version(f) -> str:
    return str((f.results.get("provenance") or {}).get("imgclf_version") or f.ckpt.get("imgclf_version") or "unknown")


# ------------------------------------------------------------------------------------------------ sections


def front_matter(f, ms: list[Measured]) -> list[str]:
    """Hugging Face's YAML metadata: what the hub indexes, and model-index's results (one per evaluation)."""
    multi = is_multilabel(f)
    results = []
    for x in ms:
        if multi:
            metrics = [("map", "mAP", x.m.get("mAP"), None), ("f1", "micro F1", x.m.get("micro_f1"), "micro")]
        else:
            metrics = [("accuracy", "Accuracy", x.m.get("accuracy"), None)]
            metrics.append(("f1", "Macro F1", x.m.get("macro_f1"), "macro"))
        entries = [
            {"type": t, "value": round(float(v), 4), "name": n} | ({"args": {"average": a}} if a else {})
            for t, n, v, a in metrics
            if isinstance(v, (int, float))
        ]
        dataset = {"name": data_name(f), "type": one_line((f.results.get("data") or {}).get("kind", "imagefolder"))}
        task = {"type": "image-classification", "name": "Image Classification"}
        results.append({"task": task, "dataset": dataset | {"split": one_line(x.split)}, "metrics": entries})
    meta = {
        "library_name": "imgclf",
        "pipeline_tag": "image-classification",
        "tags": ["imgclf", "image-classification", one_line(f.ckpt["model"]["name"])] + (["multi-label"] * multi),
        "datasets": [data_name(f)],
        "metrics": ["map", "f1"] if multi else ["accuracy", "f1"],
        "model-index": [{"name": run_name(f), "results": results}],
    }
    text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10**6)
    return ["---", *text.rstrip("\n").splitlines(), "---", ""]


def summary(f, ms: list[Measured]) -> list[str]:
    names = classes(f)
    shown = ", ".join(md_text(c) for c in names[:CLASSES_NAMED]) + (", ..." if len(names) > CLASSES_NAMED else "")
    what = "which of its labels an image shows" if is_multilabel(f) else "which one of these an image shows"
    train = sum(((f.results.get("data") or {}).get("counts") or {}).get("train", {}).values())
    x = primary(ms)
    how_well = f" Measured: {headline(x)}. {verdict(x)}".rstrip() if x else " It has not been evaluated yet."
    return [
        f"# Model card: {md_text(run_name(f))}",
        "",
        f"An image classifier of {len(names)} classes ({shown}): it tells {what}. It is "
        f"{md_code(f.ckpt['model']['name'])}, trained with imgclf {one_line(version(f))} on "
        f"{md_text(data_name(f))}" + (f" ({train} training images)." if train else ".") + how_well,
        "",
    ]


def details(f) -> list[str]:
    cfg, names = f.config, classes(f)
    if is_multilabel(f):
        kind = "multi-label: each label is decided on its own (sigmoid) at its threshold; an image may get none"
    else:
        kind = f"single-label: every image gets exactly one of the {len(names)} classes (softmax)"
    params = f"{f.parameters:,} parameters" if f.parameters is not None else "parameters not counted"
    arch = md_code(f.ckpt["model"]["name"]) + (f" ({md_text(f.description)})" if f.description else "")
    if cfg.get("weights_file"):
        init = f"the weights in {md_code(cfg['weights_file'])}"
    else:
        init = "the family's pretrained weights" if cfg.get("pretrained") else "random weights (trained from scratch)"
    t = temperature_of(f.ckpt)
    calib = "not calibrated (temperature 1)" if t == 1.0 else f"calibrated by `imgclf calibrate` (temperature {t})"
    record = ood_record(f)
    ood = "none" if not record else "kept (scores " + ", ".join(md_text(k) for k in record.get("thresholds", {})) + ")"
    lines = [
        "## Model details",
        "",
        "### Model description",
        "",
        f"- **Model type:** image classification, {kind}.",
        f"- **Architecture:** {arch}, {params}.",
        f"- **Initialised from:** {init}.",
        f"- **Input:** {preprocessing(f)}",
        f"- **Classes ({len(names)}), in output order:** " + ", ".join(md_text(c) for c in names) + ".",
        f"- **Probabilities:** {calib}.",
        f'- **Out-of-distribution record ("none of these"):** {ood}.',
        f"- **Checkpoint:** {md_code(f.weights)}, epoch {f.ckpt.get('epoch')} "
        f"({'EMA weights' if f.ckpt.get('weights') == 'ema' else 'the trained weights'}), sha256 `{f.sha256}`.",
        f"- **Library:** imgclf {one_line(version(f))}.",
        "",
        "### Model sources",
        "",
        f"- **Run folder:** {md_code(f.folder)} (config.yaml, metrics.csv, results.json, report.html, train.log).",
        "",
    ]
    return lines


def preprocessing(f) -> str:
    p = Preprocess.from_dict(f.ckpt["preprocess"])
    mean, std = ", ".join(f"{v:.3g}" for v in p.mean), ", ".join(f"{v:.3g}" for v in p.std)
    return (
        f"RGB images {p.img_size} x {p.img_size} px: decoded (EXIF orientation applied), the shorter side resized to "
        f"{p.resize} px ({p.interpolation}), centre-cropped, scaled to [0, 1] and normalised with mean ({mean}) and "
        f"std ({std}). `imgclf predict`, `serve` and every export do this themselves."
    )


def uses(f) -> list[str]:
    names, record = classes(f), ood_record(f)
    if is_multilabel(f):
        other = "- Images that show none of its labels get an empty label set only where every score stays under its threshold."
    elif record and record.get("thresholds"):
        other = (
            f"- Images of anything else: it always answers one of its {len(names)} classes. With `--reject ood` "
            f"(predict, serve) it answers `unknown` for images unlike its training data, at thresholds that keep "
            f"{_pct(record.get('accept'))} of real validation images (so about {_pct(1 - record.get('accept', 1))} "
            "of real images of its classes are answered `unknown` too)."
        )
    else:
        other = (
            f"- Images of anything else: it always answers one of its {len(names)} classes, sometimes with a high "
            'probability, and it has no "none of these" answer (`imgclf calibrate` fits one).'
        )
    return [
        "## Uses",
        "",
        "### Direct use",
        "",
        f"Sorting images like its training images ({md_text(data_name(f))}) into "
        + ", ".join(md_text(c) for c in names[:CLASSES_NAMED])
        + (", ..." if len(names) > CLASSES_NAMED else "")
        + ": `imgclf predict`, `imgclf serve`, the Python API or an export (below).",
        "",
        "### Out-of-scope use",
        "",
        other,
        "- Images unlike its training images (other cameras, viewpoints, lighting, drawings for photos, sizes far "
        f"from {f.ckpt['preprocess']['img_size']} px): nothing here measures how it does on them.",
        "- Decisions with serious consequences without a person checking them: see the limitations below.",
        "",
    ]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def recommendations(f) -> list[str]:
    w = shell(f.weights)
    return [
        "### Recommendations",
        "",
        "- Measure it on images from where it will be used before relying on it: "
        f"{md_code(f'imgclf evaluate {w} --data FOLDER')} (and `--ood-data FOLDER` with images it should refuse).",
        "- `--min-confidence P` marks answers below P as unsure; the calibration table below says how often "
        "confident answers are right.",
        "- More training images of the weakest and most confused classes are the surest improvement.",
        "",
    ]


def get_started(f) -> list[str]:
    w = shell(f.weights)
    reject = " --reject ood" if ood_record(f) and not is_multilabel(f) else ""
    bash = [
        f"imgclf predict {w} photo.jpg",
        f"imgclf predict {w} photos/ --output predictions.csv{reject}",
        f"imgclf serve {w}                      # HTTP API and a web page on 127.0.0.1",
        f"imgclf export {w} --format onnx       # also torchscript, pt2, onnx-int8, dynamic-int8",
        f"imgclf evaluate {w} --split test" if has_test(f) else f"imgclf evaluate {w} --data FOLDER",
        f"imgclf card {w}                       # this card, rebuilt with what was measured since",
    ]
    python = [
        "import imgclf",
        "",
        f"predictor = imgclf.Predictor({one_line(f.weights)!r})",
        'print(predictor.predict("photo.jpg"))',
    ]
    return ["## How to get started with the model", "", "```bash", *bash, "```", "", "```python", *python, "```", ""]


def training_data(f) -> list[str]:
    d, names = f.results.get("data") or {}, classes(f)
    counts = d.get("counts") or {}
    lines = ["## Training details", "", "### Training data", ""]
    lines.append(f"- **Source:** {md_code(data_location(f))} ({md_text(d.get('kind', 'unknown kind'))}).")
    fp = f.results.get("data_fingerprint") or f.ckpt.get("data_fingerprint")
    lines.append(
        f"- **Fingerprint:** `{one_line(fp)}` (of the file list and labels; a resume on other data is refused)."
    )
    if d.get("val_origin") == "carved":
        lines.append(
            f"- **Validation:** carved from train ({f.config.get('val_fraction')} of it, seed "
            f"{f.config.get('seed')}; the run folder's split.csv lists it)."
        )
    elif d:
        lines.append("- **Validation:** the data's own validation split.")
    lines += _check_lines(f, d)
    if counts:
        splits = list(counts)
        rows = [[md_text(c)] + [str(counts[s].get(c, 0)) for s in splits] for c in names]
        rows.append(["**all**"] + [str(sum(counts[s].values())) for s in splits])
        lines += ["", "Images per class (readable images; a test split as listed):", ""]
        lines += table(["class"] + [md_text(s) for s in splits], rows)
    else:
        lines += ["", "results.json does not hold the images per class (a run of an older imgclf).", ""]
    return lines


def _check_lines(f, d: dict) -> list[str]:
    """What the run knows of the data check: unreadable files left out, imbalance, the fixes applied, groups."""
    r, lines = f.results, []
    left = r.get("left_out")
    if left is not None:
        lines.append(f"- **Unreadable files left out:** {left}" + (" (left_out.csv lists them)." if left else "."))
    if d.get("imbalance_ratio"):
        lines.append(f"- **Class imbalance (train, largest / smallest):** {d['imbalance_ratio']:g}.")
    fixes = r.get("fixes")
    if fixes:
        lines.append(
            f"- **Fixes applied:** {fixes.get('rows_applied')} rows of {md_code(fixes.get('file', ''))}: "
            f"{fixes.get('dropped')} images dropped, {fixes.get('relabelled')} relabelled (fixes_applied.csv)."
        )
    if r.get("groups"):
        lines.append(f"- **Groups (`--group-by`):** {md_text(r['groups'])}.")
    lines.append(
        "- **Full data check** (duplicates, leaks across splits, files that lie about their format): "
        f"{md_code('imgclf check ' + shell(data_location(f)))}."
    )
    return lines


def training_procedure(f) -> list[str]:
    cfg, r = f.config, f.results
    set_by_user = set(r.get("options_set") or [])
    keys = [k for k in CORE_OPTIONS if k in cfg] + [k for k, shown in OTHER_OPTIONS if k in cfg and shown(cfg)]
    rows = [[f"`{k}`", md_code(cfg[k], in_table=True), "yes" if k in set_by_user else ""] for k in keys]
    lines = ["### Training procedure", "", "Options that shaped it (all in config.yaml):", ""]
    lines += table(["option", "value", "set by the user"], rows)
    if r:
        best = "EMA weights" if r.get("best_weights") == "ema" else "the trained weights"
        lines.append(
            f"Trained {r.get('epochs')} epochs ({r.get('steps')} steps; best epoch {r.get('best_epoch')} by "
            f"{md_text(r.get('monitor', 'val_acc'))}, {best}), precision {md_text(r.get('precision'))}, "
            f"{r.get('world_size', 1)} process(es), {r.get('train_seconds')} s of training."
            + (f" Stopped early: {md_text(r['stopped_early'])}." if r.get("stopped_early") else "")
        )
        lines.append("")
    return lines + epoch_table(f)


def epoch_table(f) -> list[str]:
    rows = f.rows
    if not rows:
        return []
    cols = [c for c in rows[0] if c not in ("lr", "seconds")]
    best = str(f.results.get("best_epoch"))
    keep = rows if len(rows) <= EPOCH_ROWS else [r for r in rows[:1] + rows[-5:] if r]
    if len(rows) > EPOCH_ROWS:
        keep = sorted(
            {id(r): r for r in keep + [r for r in rows if r.get("epoch") == best]}.values(),
            key=lambda r: int(r["epoch"]),
        )
    body = [[_cell(r.get(c)) + (" (best)" if c == "epoch" and r.get(c) == best else "") for c in cols] for r in keep]
    note = (
        "Metrics by epoch (metrics.csv: measured during training, at the run's precision; the evaluation below is "
        "best.pt validated again in fp32, as `imgclf evaluate` runs it):"
    )
    return [note, "", *table([f"`{c}`" for c in cols], body)]


def _cell(v) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return md_text(v or "")
    return str(int(x)) if x.is_integer() and abs(x) >= 1 else f"{x:.4f}"


def evaluation(f, ms: list[Measured]) -> list[str]:
    lines = ["## Evaluation", "", "### Testing data, factors & metrics", ""]
    lines.append(
        "The validation split chose the best epoch; an evaluated test split took no part in training. Accuracy "
        "with Wilson's 95% interval, macro-F1 (every class counts the same), per-class precision, recall and F1, "
        "and the expected calibration error (ECE: how far stated probabilities are from how often they are right)."
        if not is_multilabel(f)
        else "mAP (mean average precision over labels), micro- and macro-F1 at each label's threshold, and exact "
        "match (the whole label set right)."
    )
    lines += ["", "### Results", ""]
    if not ms:
        return lines + ["Not evaluated yet: `imgclf evaluate WEIGHTS`.", ""]
    lines += overall_table(ms)
    for i, x in enumerate(ms):
        same = next((y for y in ms[:i] if y.split == x.split and _per_class(y) == _per_class(x)), None)
        if same is not None:  # evaluate on the run's own validation split: the same table again
            lines += [f"#### Per class: {x.label}", "", f"The same as {same.label}.", ""]
            continue
        lines += [f"#### Per class: {x.label}", ""] + per_class_table(x)
        if not x.multilabel and confusion_lines(x):
            lines += ["Most confused:", "", *confusion_lines(x), ""]
    lines += ["### Calibration", ""] + calibration_lines(ms)
    lines += ["### Robustness", ""]
    lines += robustness_lines(f.robustness) or ["Not measured (`imgclf robustness WEIGHTS --corruptions`).", ""]
    lines += ["### Out-of-distribution", ""] + ood_lines(ood_record(f), ms)
    return lines


def _per_class(x: Measured):
    return x.m.get("per_label" if x.multilabel else "per_class"), x.m.get("confusion_matrix")


def technical(f) -> list[str]:
    p = f.results.get("provenance") or {}
    torch_version = p.get("torch_version") or f.ckpt.get("torch_version")
    lines = ["## Technical specifications", "", "### Compute infrastructure", ""]
    lines.append(f"- **Trained on:** {md_code(p['machine'])}" if p.get("machine") else "- **Trained on:** not recorded")
    lines += [
        "",
        "### Software",
        "",
        f"- imgclf {one_line(version(f))}, torch {one_line(torch_version or 'unknown')}",
        f"- Project commit: {md_code(p['git_commit']) if p.get('git_commit') else 'none (not run in a git work tree)'}",
        "",
    ]
    return lines


def citation(f) -> list[str]:
    n, model = len(classes(f)), one_line(f.ckpt["model"]["name"])
    key = f"imgclf-{f.sha256[:12]}"
    return [
        "## Citation",
        "",
        "```bibtex",
        f"@misc{{{key},",
        f"  title = {{An image classifier of {n} classes ({model.replace('{', '').replace('}', '')})}},",
        f"  note = {{Trained with imgclf {version(f)}; checkpoint sha256 {f.sha256}}},",
        "}",
        "```",
        "",
        "## More information",
        "",
        "report.html in the run folder shows these numbers as figures. Rebuild this card with "
        f"{md_code('imgclf card ' + shell(f.weights))}.",
    ]
