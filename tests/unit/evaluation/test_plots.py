"""Plots: class names in any script drawn as plain text, whole-epoch ticks, and the caller matplotlib backend
left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder


CJK = ["猫", "狗"]


def test_plots_with_cjk_class_names_no_warning(tmp_path, recwarn):
    # Before: "Glyph 29483 (\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans." for every label.
    from imgclf.evaluation import plots

    plots.plot_confusion(np.array([[3, 1], [0, 2]]), CJK, str(tmp_path / "cm.png"), title="宠物 val")
    img = np.zeros((16, 16, 3), np.uint8)
    plots.plot_misclassified([img, img], CJK, CJK[::-1], [0.9, 0.8], str(tmp_path / "mis.png"))
    assert [str(w.message) for w in recwarn] == []
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "mis.png").stat().st_size > 0
    # drawn with a font that has it, or spelled out; never a row of identical boxes
    assert plots.label("猫 cat") in ("猫 cat", "U+732B cat")


def test_plots_draw_class_names_as_plain_text(tmp_path):
    # Two `$` in a class name made matplotlib parse it as mathtext: "ParseSyntaxException: Expected
    # \frac{num}{den}" ended `evaluate` after every image had been scored.
    from imgclf.evaluation import plots

    names = ["a$\\frac{$b", "$5 & $10"]
    plots.plot_confusion(np.array([[1, 0], [0, 1]]), names, str(tmp_path / "cm.png"), title="$x$")
    plots.plot_misclassified([np.zeros((16, 16, 3), np.uint8)], names[:1], names[1:], [0.5], str(tmp_path / "mis.png"))
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "mis.png").stat().st_size > 0


def test_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    from imgclf.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.6, "val_macro_f1": 0.6}
        for e in (1, 2, 3)
    ]
    plots.plot_curves(rows, str(tmp_path / "curves.png"))
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), shown


def test_plots_leave_the_callers_backend_alone(tmp_path):
    # Before: importing imgclf.evaluation.plots called matplotlib.use("Agg"), switching a notebook's or GUI's backend.
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from imgclf.evaluation import plots
        rows = [{{"epoch": 1, "train_loss": 1, "val_loss": 1, "train_acc": 0.5, "val_acc": 0.5, "val_macro_f1": 0.5}}]
        plots.plot_curves(rows, {str(tmp_path / "c.png")!r})
        plots.plot_confusion(np.eye(2, dtype=int), ["a", "b"], {str(tmp_path / "m.png")!r})
        plots.plot_misclassified([], [], [], [], {str(tmp_path / "x.png")!r})
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "False"]
    assert all((tmp_path / n).stat().st_size > 0 for n in ("c.png", "m.png", "x.png"))
