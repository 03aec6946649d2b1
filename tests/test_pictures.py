"""Pictures that read at a glance: labelled axes, legends off the bars, SSIM numbers that
say what they are, and "all images (no fold)" instead of "fold None"."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hpatk.core.classes import CLASS_NAMES  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions close, kept open for inspection."""
    kept: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


@pytest.mark.parametrize("k", [5, 28])
def test_per_class_legend_never_covers_a_bar(figures, tmp_path, k):
    from hpatk.core.report import plot_per_class

    names = list(CLASS_NAMES[:k])
    full = [1.0] * k  # bars reaching the right edge, where a legend used to sit
    plot_per_class(names, full, tmp_path / "f1.png", f1_tuned=full)
    fig = figures[-1]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "F1" and ax.get_ylabel() == "class"
    (legend,) = _boxes(fig, fig.legends or [ax.get_legend()])
    bars = _boxes(fig, ax.patches)
    assert len(bars) == 2 * k
    assert not any(legend.overlaps(b) for b in bars)
    # the values are written on the bars
    assert sum(t.get_text() == "1.00" for t in ax.texts) == 2 * k


def test_every_curve_axis_is_labelled(figures, tmp_path):
    from hpatk.core.report import plot_curves

    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.1 / (e + 1),
             "val_macro_f1": 0.1 * e, "val_micro_f1": 0.1 * e, "val_accuracy": 0.1 * e,
             "lr": 5e-4, "batch_size": 32} for e in range(3)]
    plot_curves(rows, tmp_path / "curves.png")
    fig = figures[-1]
    assert len(fig.axes) == 4  # three panels and the batch-size twin
    for ax in fig.axes:
        assert ax.get_ylabel(), ax.get_title()
        if ax.get_title():  # the twin shares the x axis of its panel
            assert ax.get_xlabel() == "epoch"


def test_enhancement_grid_says_what_its_ssim_numbers_are(figures, tmp_path):
    from hpatk.core.enhance_report import EnhanceComparison, render_grid

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (4, 24, 24), dtype=np.uint8)
    result = EnhanceComparison(methods=["a"], configs={"a": {"name": "a"}},
                               stains=("green", "red", "blue", "yellow"))
    for i, s in enumerate([0.25, 0.75, 0.5]):
        result.rows.append({"id": f"id{i}", "method": "a", "mse": 1.0,
                            "psnr": 10 * math.log10(255**2), "ssim": s})
    result.examples += [("id0", {"original": img, "a": img}),
                        ("id1", {"original": img, "a": img})]
    render_grid(result, tmp_path / "grid.png")
    fig = figures[-1]
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 1].get_title() == "a\nmean SSIM 0.500 (3 images)"
    assert [axes[r, 1].get_xlabel() for r in range(2)] == ["SSIM 0.250", "SSIM 0.750"]
    assert "similarity to the original" in fig._suptitle.get_text()


def test_fold_label():
    from hpatk.core.folds import fold_label

    assert fold_label(None) == "all images (no fold)"
    assert fold_label(0) == "fold 0"
