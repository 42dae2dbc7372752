"""The model card's numbers (card.py): every evaluation the folder holds (the run's validation from results.json,
each eval.json), their tables (overall, per class, calibration), robustness and out-of-distribution results, and
the limitations the numbers show (the interval of a small split, the worst class, the confusions, the smallest
class, imbalance, what was not measured). Markdown lines; user strings through `md_text` / `md_code`."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from imgclf.core.escape import md_code, md_text, one_line
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.check import IMBALANCE_WARN_RATIO

WIDE_INTERVAL = 0.10  # a 95% interval of accuracy wider than this many points is called out as wide
CONFUSIONS_SHOWN = 3
WEAK_AUROC = 0.8  # below it, telling unknown images apart is called weak
WEAK_OOD_NOTE = " That is weak: most images of anything else get one of its classes."


@dataclass
class Measured:
    """One evaluation of the model: its split, metrics (compute_metrics's or multilabel_metrics's keys), calibration
    (temperature, ece, selective) and, for `evaluate --ood-data`, its "ood" block."""

    label: str  # Markdown already (user strings escaped)
    split: str
    m: dict
    trust: dict | None = None
    fmt: str = "checkpoint"
    tta: str | None = None
    ood: dict | None = None

    @property
    def multilabel(self) -> bool:
        return self.m.get("task") == MULTILABEL or "per_label" in self.m


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion k/n (n > 0)."""
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A GFM table (cells already escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def measurements(results: dict, evals: list[tuple[str, dict]]) -> list[Measured]:
    """The run's validation (results.json's best epoch) and each eval.json, in that order."""
    out = []
    best = results.get("best")
    if isinstance(best, dict) and best:
        m = {"classes": results.get("classes") or [], **best}
        epoch = results.get("best_epoch")
        out.append(Measured(f"val (results.json, best epoch {epoch})", "val", m, trust=results.get("trust")))
        if "per_class" not in best and "per_label" not in best:
            m["per_class_missing"] = True  # a run of an older imgclf: results.json holds no per-class table
    for sub, e in evals:
        split = str(e.get("split", "?"))
        fmt = str(e.get("format") or "checkpoint")
        label = (
            f"{md_text(split)} ({md_code(sub + '/eval.json', in_table=True)}"
            + ("" if fmt == "checkpoint" else f", {fmt} export")
            + ")"
        )
        out.append(Measured(label, split, e, e.get("calibration"), fmt, e.get("tta"), e.get("ood")))
    return out


def primary(ms: list[Measured]) -> Measured | None:
    """What the card's summary and limitations speak of: a test split's evaluation of the checkpoint (held out from
    every choice the run made), else any other held-out split's, else the run's validation."""
    held_out = [x for x in ms if x.split not in ("val", "train")]
    for x in held_out:
        if x.fmt == "checkpoint":
            return x
    return (held_out or ms or [None])[0]


def headline(x: Measured) -> str:
    """The main numbers of one evaluation, in a sentence."""
    n = x.m.get("num_images") or 0
    if x.multilabel:
        return (
            f"mAP {num(x.m.get('mAP'), 3)}, micro-F1 {num(x.m.get('micro_f1'), 3)} at its thresholds, "
            f"exact label set on {pct(x.m.get('exact_match'))} of the {n} {x.split} images"
        )
    acc = x.m.get("accuracy")
    if acc is None or not n:
        return f"no images in the {x.split} split"
    lo, hi = wilson(round(acc * n), n)
    return (
        f"accuracy {pct(acc)} on {n} {x.split} images (95% interval {pct(lo)} to {pct(hi)}), "
        f"macro-F1 {num(x.m.get('macro_f1'), 3)}"
    )


def majority(x: Measured) -> tuple[str, float] | None:
    """The largest class of the evaluation and the accuracy of always answering it (single-label)."""
    per, n = x.m.get("per_class") or {}, x.m.get("num_images") or 0
    if x.multilabel or not per or not n:
        return None
    c, r = max(per.items(), key=lambda cr: cr[1]["support"])
    return c, r["support"] / n


def verdict(x: Measured, lead: str = "That is") -> str:
    """How the accuracy compares with always answering the largest class: within the accuracy's 95% interval is
    no better than that."""
    base, n, acc = majority(x), x.m.get("num_images") or 0, x.m.get("accuracy")
    if base is None or acc is None:
        return ""
    c, rate = base
    lo, hi = wilson(round(acc * n), n)
    if lo <= rate:
        return (
            f"{lead} no better than always answering {md_text(c)} ({pct(rate)} of these images): the model has "
            "not learnt to tell its classes apart, and should not be used."
        )
    supports = {r["support"] for r in x.m["per_class"].values()}
    if len(supports) == 1:
        return f"Chance is {pct(rate)} (its classes have as many images each)."
    return f"Always answering {md_text(c)} would score {pct(rate)}."


def overall_table(ms: list[Measured]) -> list[str]:
    if any(x.multilabel for x in ms):
        rows = [
            [x.label, str(x.m.get("num_images")), num(x.m.get("mAP")), num(x.m.get("micro_f1"))]
            + [num(x.m.get("macro_f1")), pct(x.m.get("exact_match"))]
            for x in ms
        ]
        return table(["evaluated on", "images", "mAP", "micro-F1", "macro-F1", "exact match"], rows)
    rows = []
    for x in ms:
        n, acc = x.m.get("num_images") or 0, x.m.get("accuracy")
        ci = "n/a" if acc is None or not n else "{} to {}".format(*map(pct, wilson(round(acc * n), n)))
        ece = num((x.trust or {}).get("ece"))
        rows.append([x.label, str(n), pct(acc), ci, num(x.m.get("macro_f1")), num(x.m.get("loss")), ece])
    return table(["evaluated on", "images", "accuracy", "95% interval", "macro-F1", "loss", "ECE"], rows)


def per_class_table(x: Measured) -> list[str]:
    if x.m.get("per_class_missing"):
        return ["results.json holds no per-class table (a run of an older imgclf): `imgclf evaluate` measures it.", ""]
    if x.multilabel:
        per = x.m.get("per_label") or {}
        rows = [
            [md_text(c), num(r.get("ap")), num(r.get("threshold"), 3), num(r["precision"]), num(r["recall"])]
            + [num(r["f1"]), str(r["support"])]
            for c, r in per.items()
        ]
        return table(["label", "AP", "threshold", "precision", "recall", "F1", "images"], rows)
    per = x.m.get("per_class") or {}
    rows = [
        [md_text(c), num(r["precision"]), num(r["recall"]), num(r["f1"]), str(r["support"])] for c, r in per.items()
    ]
    return table(["class", "precision", "recall", "F1", "images"], rows)


def confusions(x: Measured, shown: int = CONFUSIONS_SHOWN) -> list[tuple[int, int, str, str]]:
    """The largest off-diagonal cells of the confusion matrix: (count, true images, true class, predicted class)."""
    cm, classes = x.m.get("confusion_matrix"), x.m.get("classes") or list(x.m.get("per_class") or {})
    if not cm or len(cm) != len(classes):
        return []
    cells = [(cm[i][j], sum(cm[i]), classes[i], classes[j]) for i in range(len(cm)) for j in range(len(cm)) if i != j]
    return sorted((c for c in cells if c[0] > 0), key=lambda c: (-c[0], c[2], c[3]))[:shown]


def confusion_lines(x: Measured) -> list[str]:
    return [
        f"- {k} of the {n} {md_text(t)} images were taken for {md_text(p)} ({pct(k / n)})."
        for k, n, t, p in confusions(x)
    ]


def calibration_lines(ms: list[Measured]) -> list[str]:
    """The temperature and ECE of each evaluation that measured them, and how often confident answers are right."""
    lines, shown = [], []
    for x in ms:
        t = x.trust
        if not t or t.get("ece") is None or isinstance(t.get("temperature"), list):
            continue
        key = (x.split, t.get("ece"), t.get("temperature"))
        if key in shown:  # evaluate on the run's own validation split: the same numbers again
            continue
        shown.append(key)
        temp = t.get("temperature", 1.0)
        how = f"temperature {temp:.4g} (from `imgclf calibrate`)" if temp != 1.0 else "no temperature fitted"
        lines.append(f"- {x.label}: ECE {num(t['ece'])} ({t.get('ece_bins', 15)} bins), {how}")
        for s in t.get("selective") or []:
            if s.get("accuracy") is not None:
                lines.append(
                    f"  - confidence at least {s['threshold']:g}: {pct(s['coverage'])} of the images, "
                    f"right on {pct(s['accuracy'])} of those"
                )
    return (lines or ["Not measured: results.json and eval.json hold no calibration of this model."]) + [""]


def robustness_lines(runs: list[tuple[str, dict]]) -> list[str]:
    """`imgclf robustness`'s measurements: accuracy under corruptions (per severity) and under attacks (per eps)."""
    lines = []
    for sub, r in runs:
        lines += [
            f"{md_code(sub + '/robustness.json')} ({r.get('num_images')} {md_text(r.get('split', ''))} images, clean "
            f"accuracy "
            f"{pct(r.get('clean_accuracy'))}):",
            "",
        ]
        c = r.get("corruptions")
        if c:
            sev = [str(s) for s in c.get("severities", [])]
            rows = [
                [name] + [pct(v["accuracy"].get(s)) for s in sev] + [pct(v.get("mean_accuracy"))]
                for name, v in c.get("results", {}).items()
            ]
            lines += table(["corruption"] + [f"severity {s}" for s in sev] + ["mean"], rows)
        a = (r.get("attacks") or {}).get("results") or {}
        if a:
            eps = [e["eps_label"] for e in next(iter(a.values()))]
            rows = [[name] + [pct(e["accuracy"]) for e in v] for name, v in a.items()]
            lines += table(["attack (L-inf)"] + [f"eps {e}" for e in eps], rows)
    return lines


def ood_lines(record: dict | None, ms: list[Measured]) -> list[str]:
    """The stored out-of-distribution record, and what each `evaluate --ood-data` measured of it."""
    if not record or not record.get("thresholds"):
        return ['The model has no out-of-distribution record: it cannot answer "none of these".', ""]
    scores = ", ".join(f"{k} {v:.4g}" for k, v in record["thresholds"].items())
    lines = [
        f"Thresholds fitted at the run's end to accept {pct(record.get('accept'))} of the "
        f"{record.get('val_images')} validation images: {scores} (kNN bank of {record.get('bank_size')} training "
        "images). `--reject ood` answers `unknown` above them.",
        "",
    ]
    measured = [x for x in ms if x.ood]
    if not measured:
        return lines + [
            "How well they tell unknown images apart was not measured (`imgclf evaluate WEIGHTS "
            "--ood-data FOLDER` measures it).",
            "",
        ]
    for x in measured:
        o = x.ood
        lines += [
            f"On {x.label}: {o.get('known_images')} known images against {o.get('unknown_images')} "
            f"unknown ones from {md_code(o.get('data', ''))}:",
            "",
        ]
        rows = [
            [k, num(v.get("auroc"), 3), pct(v.get("fpr_at_95_tpr")), pct(v.get("rejected_unknown"))]
            + [pct(v.get("rejected_known"))]
            for k, v in (o.get("scores") or {}).items()
        ]
        header = ["score", "AUROC", "unknown accepted at 95% known kept", "unknown rejected", "known rejected"]
        lines += table(header, rows)
    return lines


def best_ood(ms: list[Measured]) -> tuple[str, dict] | None:
    """The score that best told unknown images apart (highest AUROC) in the first --ood-data evaluation."""
    for x in ms:
        scores = (x.ood or {}).get("scores") or {}
        ranked = sorted(scores.items(), key=lambda kv: -(kv[1].get("auroc") or 0))
        if ranked:
            return ranked[0]
    return None


def worst_class(x: Measured) -> tuple[str, dict] | None:
    per = x.m.get("per_label" if x.multilabel else "per_class") or {}
    key = "f1" if x.multilabel else "recall"
    ranked = sorted(((c, r) for c, r in per.items() if r.get("support")), key=lambda cr: (cr[1][key], cr[0]))
    return ranked[0] if ranked else None


def limitation_lines(f, ms: list[Measured], record: dict | None) -> list[str]:
    """What the numbers say about where the model fails, one bullet each."""
    x, out = primary(ms), []
    if x is None:
        return ["- Not evaluated: results.json and eval.json hold no metrics (`imgclf evaluate WEIGHTS`).", ""]
    n = x.m.get("num_images") or 0
    if not x.multilabel and n and x.m.get("accuracy") is not None:
        lo, hi = wilson(round(x.m["accuracy"] * n), n)
        wide = " That is wide: more evaluation images would pin it down." if hi - lo > WIDE_INTERVAL else ""
        out.append(f"- Measured on {n} {x.split} images: the accuracy's 95% interval is {pct(lo)} to {pct(hi)}.{wide}")
        if verdict(x, "Its accuracy is"):
            out.append(f"- {verdict(x, 'Its accuracy is')}")
    worst = worst_class(x)
    if worst and worst[1]["f1" if x.multilabel else "recall"] < 1.0:
        c, r = worst
        what = f"F1 {num(r['f1'], 3)}" if x.multilabel else f"recall {pct(r['recall'])}"
        out.append(f"- Weakest class on {x.split}: {md_text(c)} ({what}, {r['support']} images).")
    out += confusion_lines(x)
    out += _data_limitations(f.results.get("data") or {})
    out += _robustness_limitations(f.robustness)
    out += _trust_limitations(x, ms, record)
    return out + [""]


def _data_limitations(d: dict) -> list[str]:
    out = []
    train = (d.get("counts") or {}).get("train") or {}
    if train:
        c, n = min(train.items(), key=lambda cn: (cn[1], cn[0]))
        out.append(f"- Smallest class in training: {md_text(c)} with {n} images.")
    ratio = d.get("imbalance_ratio")
    if ratio and ratio >= IMBALANCE_WARN_RATIO:
        out.append(
            f"- The training classes are imbalanced (largest / smallest {ratio:g}): rare classes are "
            "recognised less often."
        )
    return out


def _robustness_limitations(runs: list[tuple[str, dict]]) -> list[str]:
    """The corruption that cost the most accuracy at its highest severity measured, per robustness.json."""
    out = []
    for sub, r in runs:
        c = (r.get("corruptions") or {}).get("results") or {}
        cells = [(v["accuracy"][s], name, s) for name, v in c.items() for s in v.get("accuracy", {})]
        if not cells:
            continue
        acc, name, sev = min(cells, key=lambda a: (a[0], a[1]))
        out.append(
            f"- Under common corruptions ({md_code(sub)}, {r.get('num_images')} images, clean accuracy "
            f"{pct(r.get('clean_accuracy'))}): worst {name} at severity {sev}, {pct(acc)}; mean "
            f"{pct(r['corruptions'].get('mean_accuracy'))}."
        )
    return out


def _trust_limitations(x: Measured, ms: list[Measured], record: dict | None) -> list[str]:
    out = []
    ece = (x.trust or {}).get("ece")
    if ece is not None and ece > 0.05 and (x.trust or {}).get("temperature") == 1.0:
        out.append(
            f"- Its probabilities are off by {num(ece, 3)} on average (ECE): `imgclf calibrate` fits a "
            "temperature that corrects them."
        )
    best = best_ood(ms)
    if best:
        name, s = best
        out.append(
            f"- Telling unknown images apart: best score {name} (`--reject ood --ood-score {name}`), AUROC "
            f"{num(s.get('auroc'), 3)}; "
            f"at its stored threshold {pct(s.get('rejected_unknown'))} of the unknown images were rejected "
            f"and {pct(s.get('rejected_known'))} of the known ones."
            + (WEAK_OOD_NOTE if (s.get("auroc") or 0) < WEAK_AUROC else "")
        )
    elif record and record.get("thresholds"):
        out.append('- Its "none of these" answer (`--reject ood`) was never measured on unknown images.')
    else:
        out.append('- It has no "none of these" answer: an image of anything else gets one of its classes.')
    if not any(m.split not in ("val", "train") for m in ms):
        out.append(
            "- Not measured on a held-out test split: the validation split also chose the best epoch, "
            "so its numbers lean optimistic."
        )
    return out


def shell(path: str) -> str:
    """A path as one shell word (for the commands a card shows)."""
    return shlex.quote(one_line(path))
