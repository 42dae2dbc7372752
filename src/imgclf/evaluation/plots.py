"""Figures written into run and evaluation folders (matplotlib, no display needed).

Each figure is a `matplotlib.figure.Figure` drawn by its own Agg canvas: no pyplot and no `matplotlib.use`,
so the caller's backend, open figures and interactive state are left as they were.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np

from imgclf.core.fileio import atomic_open

log = logging.getLogger(__name__)

# Fonts with wide Unicode coverage, tried in turn after the default one for the glyphs it lacks, so that class
# names in CJK, Arabic, Devanagari... are drawn where the machine has such a font (matplotlib >= 3.6 falls back
# glyph by glyph along a family list). Those not installed are skipped.
FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Microsoft YaHei",
    "SimHei",
    "Yu Gothic",
    "Malgun Gothic",
    "PingFang SC",
    "Hiragino Sans",
    "Apple SD Gothic Neo",
    "Arial Unicode MS",
    "Noto Sans",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Devanagari",
    "Noto Sans Thai",
)


def new_figure(**kw):
    """A Figure drawn by its own Agg canvas (no pyplot): `Figure(**kw)`, to be written by `save_figure`."""
    # matplotlib (~0.75 s of imports) only when a figure is drawn: every training process, each torchrun rank
    # included, imports this module, and most draw nothing until the run's end
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - heavy, see above
    from matplotlib.figure import Figure  # noqa: PLC0415 - heavy, see above

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


@functools.cache
def _font_family() -> tuple[str, ...]:
    """The default font family, then the installed fallback fonts: looked up once per process (`label` asks for
    it for every name it draws, and the installed fonts do not change while imgclf runs)."""
    from matplotlib import font_manager, rcParams  # noqa: PLC0415 - heavy: only when a figure is drawn

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(rcParams["font.family"]) + tuple(f for f in FALLBACK_FONTS if f in installed)


@functools.lru_cache(maxsize=8)
def _drawable(family: tuple[str, ...]) -> frozenset[int]:
    """The code points that the fonts of `family` have glyphs for."""
    from matplotlib import font_manager  # noqa: PLC0415 - heavy: only when a figure is drawn

    points: set[int] = set()
    for name in family:
        path = font_manager.findfont(font_manager.FontProperties(family=[name]))
        points.update(font_manager.get_font(path).get_charmap())
    return frozenset(points)


def label(name: str) -> str:
    """`name` as it can be drawn here, as plain text: a character that no installed font has becomes U+XXXX,
    so that class names in a script without a font stay readable and distinct instead of a row of identical
    boxes, and `$` is escaped (two of them would start mathtext, which a name like "a$\\frac{$b" breaks)."""
    ok = _drawable(_font_family())
    drawn = "".join(c if ord(c) in ok or not c.isprintable() else f"U+{ord(c):04X}" for c in name)
    return drawn.replace("$", r"\$")


def save_figure(fig, path: str) -> None:
    """`fig` as a PNG at `path` (written atomically), every text in the font family that can draw it."""
    from matplotlib.text import Text  # noqa: PLC0415 - heavy: only when a figure is drawn

    family = list(_font_family())
    for t in fig.findobj(Text):
        t.set_fontfamily(family)
    for ax in fig.axes:
        try:
            ax.tick_params(labelfontfamily=family)  # ticks made while drawing (matplotlib >= 3.8)
        except ValueError:  # older: the tick labels found above carry it, and new ticks copy theirs
            pass
    with warnings.catch_warnings():
        # label() spells out what no installed font can draw; anything it missed is drawn as a box, not a warning
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(rows: list[dict], path: str) -> None:
    """Loss and accuracy per epoch, train against validation; a multi-label run's rows (val_mAP): its train_acc
    (the labels right at 0.5), val mAP and micro-F1."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - heavy: only when a figure is drawn

    ep = [r["epoch"] for r in rows]
    fig = new_figure(figsize=(10, 3.8))
    a, b = fig.subplots(1, 2)
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in rows], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    multilabel = bool(rows) and "val_mAP" in rows[0]
    b.plot(ep, [r["train_acc"] for r in rows], "o-", label="train (labels right at 0.5)" if multilabel else "train")
    if multilabel:
        b.plot(ep, [r["val_mAP"] for r in rows], "o-", label="val mAP")
        b.plot(ep, [r["val_micro_f1"] for r in rows], ":", label="val micro-F1 at 0.5")
    else:
        b.plot(ep, [r["val_acc"] for r in rows], "o-", label="val")
    b.plot(ep, [r["val_macro_f1"] for r in rows], "--", label="val macro-F1")
    if any("val_robust_acc" in r for r in rows):
        b.plot(ep, [r.get("val_robust_acc") for r in rows], "o:", label="val under PGD-10 (--adv-train)")
    b.set_xlabel("epoch"), b.set_ylabel("score" if multilabel else "accuracy"), b.legend(), b.grid(alpha=0.3)
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    save_figure(fig, path)


def plot_confusion(
    cm: np.ndarray,
    classes: list[str],
    path: str,
    title: str = "",
    *,
    xlabel: str = "Predicted label",
    ylabel: str = "True label",
) -> None:
    """Counts, true class down and predicted across (drawn here rather than by sklearn's
    ConfusionMatrixDisplay, which goes through pyplot); other axis names for other counts (a multi-label model's
    errors by true label)."""
    cm = np.asarray(cm)
    n = len(classes)
    size = min(max(4.0, 0.45 * n + 2), 30)
    fig = new_figure(figsize=(size, size))
    ax = fig.subplots()
    im = ax.imshow(cm, interpolation="nearest", cmap="Blues")
    if n <= 30:  # more and the numbers overlap
        low, high = im.cmap(0.0), im.cmap(1.0)
        middle = (cm.max() + cm.min()) / 2.0
        for i, j in np.ndindex(cm.shape):
            ax.text(j, i, f"{cm[i, j]:d}", ha="center", va="center", color=high if cm[i, j] < middle else low)
    names = [label(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(label(title))
    save_figure(fig, path)


def plot_misclassified(images: list, true: list[str], pred: list[str], prob: list[float], path: str) -> None:
    """A grid of the most confident mistakes: each image with its true and predicted label."""
    n = len(images)
    if n == 0:
        fig = new_figure(figsize=(4, 1.5))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        save_figure(fig, path)
        return
    cols = min(6, n)
    rows = (n + cols - 1) // cols
    fig = new_figure(figsize=(2.3 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p, pr in zip(axes.flat, images, true, pred, prob):
        ax.imshow(img, interpolation="nearest" if min(img.shape[:2]) < 64 else "antialiased")
        ax.set_title(f"true: {label(t)}\npred: {label(p)} ({pr:.2f})", fontsize=8, color="firebrick")
    save_figure(fig, path)


def plot_lr_find(result: dict, path: str) -> None:
    """The learning-rate range test (training/lr_find.py): loss against learning rate on a log axis, the smoothed curve
    over the raw one, and the suggested learning rate marked."""
    fig = new_figure(figsize=(6.5, 4))
    ax = fig.subplots()
    lrs = result["lrs"]
    if result.get("raw_losses"):
        ax.plot(lrs, result["raw_losses"], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, result["losses"], color="tab:blue", label="smoothed loss")
    lr = result.get("suggestion")
    if lr is not None:
        ax.axvline(lr, color="tab:red", linestyle="--", linewidth=1)
        ax.plot(
            [lr],
            [np.interp(np.log(lr), np.log(lrs), result["losses"])],
            "o",
            color="tab:red",
            label=f"suggested lr {lr:.3g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate"), ax.set_ylabel("training loss"), ax.grid(alpha=0.3, which="both")
    ax.set_title("learning-rate range test" if lr is not None else "learning-rate range test: no suggestion")
    if lrs:
        ax.legend()
    save_figure(fig, path)


def plot_reliability(
    bins: list[dict],
    ece: float,
    path: str,
    title: str = "",
    *,
    xlabel: str = "confidence (top-1 probability)",
    ylabel: str = "accuracy",
) -> None:
    """The reliability diagram (calibration.reliability's bins): accuracy against confidence per confidence bin,
    with the diagonal a calibrated model follows and, below, how many images each bin holds (a multi-label model's
    names its axes: the fraction of positives against the label's probability, per image and label)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - heavy: only when a figure is drawn

    fig = new_figure(figsize=(5, 5.6))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lo = np.array([b["low"] for b in bins])
    width = np.array([b["high"] - b["low"] for b in bins])
    full = [b["images"] > 0 for b in bins]
    acc = np.array([b["accuracy"] if f else 0.0 for b, f in zip(bins, full)])
    conf = np.array([b["confidence"] if f else 0.0 for b, f in zip(bins, full)])
    ax.bar(lo, acc, width, align="edge", color="tab:blue", edgecolor="white", label=ylabel)
    # the gap to the bin's mean confidence, hatched: above the bar where the model is over-confident, inside it
    # where it is under-confident
    ax.bar(
        lo,
        conf - acc,
        width,
        bottom=acc,
        align="edge",
        facecolor="none",
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.8,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel), ax.grid(alpha=0.3), ax.legend(loc="upper left", fontsize=8)
    ax.set_title(label(f"{title}  ECE {ece:.4f}" if title else f"ECE {ece:.4f}"))
    hist.bar(lo, [b["images"] for b in bins], width, align="edge", color="0.6", edgecolor="white")
    hist.set_xlabel(xlabel), hist.set_ylabel("images"), hist.grid(alpha=0.3)
    hist.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    save_figure(fig, path)


def plot_ood_histogram(hist: dict, path: str, title: str = "", *, score: str = "", threshold=None) -> None:
    """One out-of-distribution score's histograms (evaluation/ood_eval.py `histogram`: shared bin edges, counts of
    the known and the unknown images), each as the fraction of its own images per bin, with the model's stored
    threshold (above it an image is rejected) as a vertical line where there is one."""
    edges = np.asarray(hist["edges"], dtype=np.float64)
    fig = new_figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for key, colour in (("known", "tab:blue"), ("unknown", "tab:red")):
        counts = np.asarray(hist[key], dtype=np.float64)
        frac = counts / max(counts.sum(), 1.0)
        ax.stairs(frac, edges, fill=True, alpha=0.35, color=colour)
        ax.stairs(frac, edges, color=colour, label=f"{key} ({int(counts.sum())} images)")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"stored threshold {threshold:.4g}")
    ax.set_xlabel(f"{score} score (higher: less like the training data)" if score else "score")
    ax.set_ylabel("fraction of images"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    if title:
        ax.set_title(label(title))
    save_figure(fig, path)
