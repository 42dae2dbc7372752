"""Figures written into run and evaluation folders (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_open  # noqa: E402


def _save(fig, path: str) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(rows: list[dict], path: str) -> None:
    """Loss and accuracy per epoch, train against validation."""
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in rows], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [r["train_acc"] for r in rows], "o-", label="train")
    b.plot(ep, [r["val_acc"] for r in rows], "o-", label="val")
    b.plot(ep, [r["val_macro_f1"] for r in rows], "--", label="val macro-F1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: str, title: str = "") -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(max(4.0, 0.45 * n + 2), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=90 if n > 6 else 0, include_values=n <= 30
    )
    ax.set_title(title)
    _save(fig, path)


def plot_misclassified(images: list, true: list[str], pred: list[str], prob: list[float], path: str) -> None:
    """A grid of the most confident mistakes: each image with its true and predicted label."""
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        _save(fig, path)
        return
    cols = min(6, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p, pr in zip(axes.flat, images, true, pred, prob):
        ax.imshow(img, interpolation="nearest" if min(img.shape[:2]) < 64 else "antialiased")
        ax.set_title(f"true: {t}\npred: {p} ({pr:.2f})", fontsize=8, color="firebrick")
    _save(fig, path)
