"""`imgclf check` on a multi-label manifest (torch-free): what data/check.py adds when an image may hold any number
of labels (its `labels` cell `a|b`, empty for none).

Per split, the images that hold each label (check's class table, counted per label: an image counts once for each
of its labels), the labels per image and the images with none; the labels seen together most often in train
(co-occurrence, with the share of the rarer label's images that also hold the other); imbalance in the
multi-label sense: the most frequent label's train images over the rarest's, warned about from the ratio where
`check` warns about single-label classes, and a label on every train image (the model never sees it absent, so
it cannot learn to say no). An image with no label is a warning: the model learns every label as absent from
it, which is right for a true negative and wrong for an image someone forgot to label. Labels absent from a
split are check's `empty-class` findings (an error in train, a warning elsewhere).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from imgclf.core.multilabel import split_labels
from imgclf.data.multilabel import co_occurrence, multi_hot

TOP_PAIRS = 10  # co-occurring label pairs in the summary and text


def count_labels(per_split: dict[str, dict[str, int]], items, *, multilabel: bool) -> None:
    """Add each image to check's table: `items` are (split, label) pairs; a multi-label image's label is its
    label set's cell, and it counts once for each of its labels."""
    for split, cell in items:
        for label in split_labels(cell) if multilabel else [cell]:
            per_split[split][label] += 1


def multilabel_summary(items, classes: list[str], per_split: dict, warn_ratio: float) -> tuple[dict, list[tuple]]:
    """(the summary's `multilabel` entry, warnings as (kind, paths, detail)) of the readable images: `items` are
    (split, label cell, path as shown)."""
    by_split: dict[str, list[tuple[str, str]]] = {}
    for split, cell, shown in items:
        by_split.setdefault(split, []).append((cell, shown))
    per_image, warnings = {}, []
    for split, rows in by_split.items():
        sizes = [len(split_labels(c)) for c, _ in rows]
        per_image[split] = {
            "images": len(sizes),
            "mean": round(float(np.mean(sizes)), 3),
            "max": max(sizes),
            "none": sizes.count(0),
        }
        warnings += [
            ("no-label", [shown], f"no label in {split}: the model learns every label as absent from it")
            for (cell, shown), n in zip(rows, sizes)
            if n == 0
        ]
    train = [split_labels(c) for c, _ in by_split.get("train", [])]
    targets = multi_hot(train, classes) if train else np.zeros((0, len(classes)), dtype=np.uint8)
    counts = {c: per_split.get("train", {}).get(c, 0) for c in classes}
    present = {c: n for c, n in counts.items() if n}
    ratio = round(max(present.values()) / min(present.values()), 2) if present else None
    if ratio is not None and ratio > warn_ratio:
        big, small = max(present, key=present.get), min(present, key=present.get)
        warnings.append(
            (
                "label-imbalance",
                [f"train:{big}", f"train:{small}"],
                f"the most frequent train label is on {ratio}x the images of the rarest ({present[big]} vs "
                f"{present[small]}); consider --pos-weight",
            )
        )
    n_train = len(train)
    warnings += [
        ("label-on-every-image", [f"train:{c}"], f"all {n} train images hold it: the model never sees it absent")
        for c, n in counts.items()
        if n_train and n == n_train
    ]
    summary = {
        "labels_per_image": per_image,
        "label_imbalance_ratio": ratio,
        "positive_rate_train": {c: round(n / n_train, 4) if n_train else None for c, n in counts.items()},
        "co_occurrence_train": top_pairs(targets, classes),
    }
    return summary, warnings


def top_pairs(targets: np.ndarray, classes: list[str], k: int = TOP_PAIRS) -> list[dict]:
    """The `k` label pairs held together by the most images: each with that count and the share of the rarer
    label's images that hold the other too."""
    co = co_occurrence(targets)
    pairs = [
        {
            "labels": [classes[a], classes[b]],
            "images": int(co[a, b]),
            "share_of_rarer": round(float(co[a, b]) / min(co[a, a], co[b, b]), 4),
        }
        for a, b in combinations(range(len(classes)), 2)
        if co[a, b]
    ]
    return sorted(pairs, key=lambda p: (-p["images"], p["labels"]))[:k]


def multilabel_lines(m: dict) -> list[str]:
    """check's text lines for the summary's `multilabel` entry."""
    per = m["labels_per_image"]
    lines = [
        "labels per image (mean/max; images with none): "
        + ", ".join(f"{s} {v['mean']:.2f}/{v['max']}; {v['none']}" for s, v in per.items())
    ]
    ratio = m["label_imbalance_ratio"]
    lines.append(
        "label imbalance (most/least frequent label in train): " + (f"{ratio:.2f}" if ratio is not None else "n/a")
    )
    if m["co_occurrence_train"]:
        lines.append(
            "labels seen together most in train: "
            + ", ".join(
                f"{'+'.join(p['labels'])} {p['images']} ({p['share_of_rarer']:.0%})" for p in m["co_occurrence_train"]
            )
        )
    return lines
