"""``report.md`` of a run, with its plots (matplotlib, Agg): training curves and the
per-class F1 of the best macro-F1 model on the validation fold."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpatk.core.io import atomic_open
from hpatk.core.picture import pyplot, save_figure


def plot_curves(rows: list[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """Loss, F1/accuracy and learning rate / batch size per epoch, one PNG."""
    plt = pyplot()
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    ax[0].plot(ep, [r["val_loss"] for r in rows], "o-", label="validation")
    ax[0].set(title="loss", xlabel="epoch", ylabel="loss (training objective)")
    ax[0].legend()
    present = rows[-1].get("val_classes_present")
    macro = f"macro F1 ({int(present)} classes present)" if present is not None else "macro F1"
    for key, label in (("val_macro_f1", macro), ("val_micro_f1", "micro F1"),
                       ("val_accuracy", "accuracy")):
        ax[1].plot(ep, [r[key] for r in rows], "o-", label=label)
    ax[1].set(title="validation metrics (threshold 0.5)", xlabel="epoch", ylabel="score",
              ylim=(0, 1))
    ax[1].legend()
    ax[2].plot(ep, [r["lr"] for r in rows], "o-", color="C3")
    ax[2].set(title="learning rate (line) / batch size (bars)", xlabel="epoch",
              ylabel="learning rate")
    twin = ax[2].twinx()
    twin.bar(ep, [r["batch_size"] for r in rows], alpha=0.2, color="C4")
    twin.set_ylabel("batch size")
    ax[2].set_zorder(twin.get_zorder() + 1)  # the lr line over the bars
    ax[2].patch.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def plot_per_class(names: Sequence[str], f1: Sequence[float], path: str | os.PathLike[str],
                   f1_tuned: Sequence[float] | None = None, title: str = "") -> Path:
    """Horizontal bars of per-class F1 (at 0.5, and with tuned thresholds if given), each
    with its value; the legend sits below the axes, never over a bar."""
    import numpy as np

    plt = pyplot()
    k = len(names)
    two = f1_tuned is not None
    fig, ax = plt.subplots(figsize=(7, 0.32 * k * (1.5 if two else 1) + 1.9))
    y = np.arange(k)
    h = 0.4 if two else 0.8
    bars = [ax.barh(y - (h / 2 if two else 0), f1, height=h, label="threshold 0.5")]
    if two:
        bars.append(ax.barh(y + h / 2, f1_tuned, height=h, label="tuned thresholds"))
    for b in bars:
        ax.bar_label(b, fmt="%.2f", padding=2, fontsize=7)
    ax.set_yticks(y, list(names))
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, no empty margin
    ax.set(xlim=(0, 1.1), xticks=np.linspace(0, 1, 6), xlabel="F1", ylabel="class",
           title=title or "per-class F1 (validation)")
    if two:  # below the x label, outside the axes
        fig.legend(loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight() if two else 0, 1, 1))
    return save_figure(fig, path, dpi=90)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(run_dir: str | os.PathLike[str], *, title: str, rows: list[dict[str, float]],
                 settings: dict[str, Any], best: dict[str, dict[str, Any]],
                 class_names: Sequence[str], f1: Sequence[float], f1_tuned: Sequence[float],
                 thresholds: Sequence[float], support: Sequence[int],
                 notes: Sequence[str] = (), evaluated: str = "the validation fold") -> Path:
    """Write ``report.md``, ``curves.png`` and ``per_class_f1.png`` into ``run_dir``.

    Args:
        best: checkpoint name -> {"epoch": int, metric: value, ...}.
        f1, f1_tuned, thresholds, support: per class, in ``class_names`` order.
        evaluated: what the metrics were computed on (for the report's sentences).

    Macro F1 is over the classes present (support > 0); the mean over all classes is a
    column of its own, named as such.
    """
    run_dir = Path(run_dir)
    lines = [f"# {title}", ""]
    if rows:
        plot_curves(rows, run_dir / "curves.png")
    plot_per_class(class_names, f1, run_dir / "per_class_f1.png", f1_tuned)
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    k = len(class_names)
    present = sum(1 for s in support if s > 0)
    lines += ["", "## Checkpoints", "",
              f"| checkpoint | epoch | val loss | macro F1 (Kaggle) over {present} of {k} "
              f"present | macro F1 (all {k}) | macro F1 (paper Eq. 8) | micro F1 | accuracy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in best.items():
        lines.append(f"| {name} | {m.get('epoch', '')} | {_fmt(m.get('val_loss', ''))} | "
                     f"{_fmt(m.get('val_macro_f1', ''))} | "
                     f"{_fmt(m.get('val_macro_f1_all', ''))} | "
                     f"{_fmt(m.get('val_paper_macro_f1', ''))} | "
                     f"{_fmt(m.get('val_micro_f1', ''))} | "
                     f"{_fmt(m.get('val_accuracy', ''))} |")
    absent = [n for n, s in zip(class_names, support, strict=True) if s == 0]
    lines += ["", f"Metrics on {evaluated}, at threshold 0.5 unless named otherwise. Macro F1 "
              f"(Kaggle: the mean of per-class F1) is over the {present} of {k} classes present "
              f"(at least one positive image); 'all {k}' averages every class of the model, "
              f"absent ones scoring 0"
              + (f" (absent: {', '.join(absent)})" if absent else "")
              + "; macro F1 (paper Eq. 8): the F1 of the mean precision and mean recall over "
              "the classes present (never below the Kaggle value).", ""]
    if rows:
        lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    lines += [f"## Per-class F1 ({'best macro-F1 model, ' if rows else ''}{evaluated})", "",
              "![per-class F1](per_class_f1.png)", "",
              "| class | support | F1 @0.5 | threshold | F1 @threshold |",
              "|---|---:|---:|---:|---:|"]
    for n, s, a, t, b in zip(class_names, support, f1, thresholds, f1_tuned, strict=True):
        if s == 0:  # no positive image: F1 is 0 whatever the model does
            lines.append(f"| {n} | 0 (absent) | - | {t:.2f} | - |")
        else:
            lines.append(f"| {n} | {s} | {a:.3f} | {t:.2f} | {b:.3f} |")
    lines += ["", "Thresholds are tuned on these same images, so the tuned column is "
              "optimistic.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if rows:
        lines += ["## Epochs", "", "| epoch | lr | batch | train loss | val loss | "
                  f"macro F1 (Kaggle, {present} present) | micro F1 | accuracy | time (s) |",
                  "|---:" * 9 + "|"]
        for r in rows:
            lines.append(f"| {r['epoch']} | {r['lr']:.2e} | {r['batch_size']} | "
                         f"{r['train_loss']:.4f} | {r['val_loss']:.4f} | {r['val_macro_f1']:.4f} "
                         f"| {r['val_micro_f1']:.4f} | {r['val_accuracy']:.4f} | {r['time']:.1f} |")
    path = run_dir / "report.md"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
