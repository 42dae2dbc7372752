"""The figures of active learning: the contact sheet of the images `select` chose, and the simulation's
learning curves (drawn as evaluation/plots.py draws, no pyplot)."""

from __future__ import annotations

import os

import numpy as np

from imgclf.data.images import UnreadableImage, load_image
from imgclf.evaluation.plots import label, new_figure, save_figure

# Thumbnails on the sheet: the shorter side in pixels (1.6 inches at the plots' 110 dpi), 8 to a row, and at
# most SHEET_MAX of them (a sheet of thousands is unreadable; selected.csv lists every pick).
THUMB_PX = 176
SHEET_COLS = 8
SHEET_MAX = 200


def contact_sheet(rows: list, path: str, *, title: str, cols: int = SHEET_COLS, numbered: bool = True) -> None:
    """A PNG grid of the chosen images in the order asked, each with its rank, file name, predicted label,
    probability and score under it. A row may give its pixels (`image`: H x W x 3 uint8, for an in-memory image)
    instead of reading `path`, and its own `caption` line instead of the predicted label, probability and score;
    None is an empty cell. `cols` images a row; `numbered` False: no rank before the file name (`similar`'s
    sheet: a query and its neighbours a row)."""
    save_figure(sheet_figure(rows, title=title, cols=cols, numbered=numbered), path)


def sheet_figure(rows: list, *, title: str, cols: int = SHEET_COLS, numbered: bool = True):
    shown = rows[:SHEET_MAX]
    cols = max(1, min(cols, len(shown)))
    n_rows = max(1, -(-len(shown) // cols))
    height = 2.2 * n_rows + 0.4
    fig = new_figure(figsize=(2.0 * cols, height))
    axes = fig.subplots(n_rows, cols, squeeze=False)
    # margins in inches, not shares of the figure: a sheet of 25 rows keeps its title next to its first row
    fig.subplots_adjust(hspace=0.45, wspace=0.12, top=1 - 0.45 / height, bottom=0.45 / height)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, r) in enumerate(zip(axes.flat, shown), start=1):
        if r is None:
            continue
        try:
            im = (
                np.asarray(r["image"])
                if r.get("image") is not None
                else np.asarray(load_image(r["path"], resize=THUMB_PX))
            )
            ax.imshow(im, interpolation="nearest" if min(im.shape[:2]) < THUMB_PX else "antialiased")
        except UnreadableImage as e:  # changed since it was scored: say so in its cell
            ax.text(0.5, 0.5, f"unreadable\n{e}"[:60], ha="center", va="center", fontsize=7, transform=ax.transAxes)
        name = os.path.basename(r["path"])
        name = name if len(name) <= 22 else name[:9] + "..." + name[-10:]
        caption = (
            label(r["caption"])
            if "caption" in r
            else f"{label(r['predicted_label'])} {r['probability']:.2f}, score {r['score']:.3f}"
        )
        ax.text(
            0.5,
            -0.03,
            (f"{i}. " if numbered else "") + f"{label(name)}\n{caption}",
            ha="center",
            va="top",
            fontsize=7,
            transform=ax.transAxes,
        )
    listed = rows[0].get("listed_in", "selected.csv") if rows and rows[0] else "selected.csv"
    more = f" (the first {SHEET_MAX} of {len(rows)}: {listed} lists them all)" if len(rows) > SHEET_MAX else ""
    fig.suptitle(label(title) + more, fontsize=10, y=1 - 0.12 / height)
    return fig


def plot_learning_curves(summary: list[dict], path: str, *, title: str) -> None:
    """Accuracy against the number of labels: one curve per strategy (mean over seeds), its min-max band."""
    fig = new_figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    # a style per strategy: curves that coincide (entropy and margin rank alike with two classes) stay visible
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (5, 1)))]
    for i, strat in enumerate(dict.fromkeys(r["strategy"] for r in summary)):
        pts = sorted((r for r in summary if r["strategy"] == strat), key=lambda r: r["labels"])
        xs = [r["labels"] for r in pts]
        marker, ls = styles[i % len(styles)]
        (line,) = ax.plot(
            xs,
            [r["mean"] for r in pts],
            marker=marker,
            linestyle=ls,
            markersize=4,
            fillstyle="none",
            label=label(strat),
        )
        ax.fill_between(xs, [r["min"] for r in pts], [r["max"] for r in pts], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("accuracy")
    ax.set_title(label(title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
