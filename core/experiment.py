"""The paper's Table 1 as a command: every backbone x input size trained on the same
folds; macro F1 (best validation checkpoint) mean +- sd over folds, as markdown, CSV
and a bar chart."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core import distributed as ddp
from hpatk.core.errors import HpatkError
from hpatk.core.io import atomic_open
from hpatk.core.picture import pyplot, save_figure
from hpatk.core.train_config import TrainConfig

# val_macro_f1: Kaggle (mean per-class F1) over the classes present in the fold;
# val_macro_f1_all: over every class; val_paper_macro_f1: the paper's Eq. 8
RESULT_KEYS = ("val_macro_f1", "val_micro_f1", "val_accuracy", "val_paper_macro_f1",
               "val_macro_f1_all")


def run_backbones(base: TrainConfig, backbones: list[str], sizes: list[int],
                  out: str | os.PathLike[str],
                  fold_subset: list[int] | None = None) -> list[dict[str, Any]]:
    """Train each backbone at each size on the folds ``fold_subset`` (all by default).

    Folds are assigned once (``OUT/folds.csv``) and shared by every run. Runs live in
    ``OUT/runs/<backbone>_<size>/fold_K``; a finished one is reused, an interrupted one
    resumed, so the command can be rerun after a stop.

    Returns:
        One row per (backbone, size, fold) with the best macro-F1 checkpoint's metrics.
    """
    from hpatk.core.engine import train
    from hpatk.core.run import read_metrics
    from hpatk.core.train_data import plan_data, write_run_folds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds = fold_subset if fold_subset is not None else list(range(base.folds))
    bad = [k for k in folds if not 0 <= k < base.folds]
    if bad:
        raise HpatkError(f"--fold-subset: fold {bad[0]} is not in 0..{base.folds - 1}")
    if not backbones or not sizes:
        raise HpatkError("--backbones and --sizes need at least one value each")
    from hpatk.core.registry import get_registry

    for b in backbones:
        get_registry().backbones.get(b)  # unknown names fail before any training
    folds_csv = out / "folds.csv"
    with ddp.main_first("assigning the folds"):
        if ddp.is_main() and not folds_csv.exists():
            write_run_folds(plan_data(base.replace(size=sizes[0], fold=folds[0])), folds_csv)
    jobs = [(backbone, size, k) for size in sizes for backbone in backbones for k in folds]

    def run_dir(backbone: str, size: int, k: int) -> Path:
        return out / "runs" / f"{backbone}_{size}" / f"fold_{k}"

    def result(backbone: str, size: int, k: int) -> dict[str, Any]:
        return {"backbone": backbone, "size": size, "fold": k,
                **_best_row(run_dir(backbone, size, k))}

    finished: list[tuple[str, int, int]] = []
    for job in ddp.spread(jobs):  # under torchrun: this rank's share, round robin
        backbone, size, k = job
        cfg = base.replace(backbone=backbone, size=size, fold=k, out=str(run_dir(*job)),
                           folds_file=str(folds_csv))
        done = (run_dir(*job) / "thresholds.json").exists() and len(
            read_metrics(run_dir(*job) / "metrics.csv")) >= cfg.epochs
        if not done:
            with ddp.single_process():  # a job of its own: it writes its run folder
                train(cfg, resume=(run_dir(*job) / "last.pt").exists())
        finished.append(job)
        if not ddp.current().enabled:  # one process: results.csv grows job by job
            write_results(out, [result(*j) for j in finished])
    ddp.barrier(ddp.JOIN_WAIT_S)  # every rank's jobs are done
    results = [result(*j) for j in jobs]
    if ddp.is_main():
        write_results(out, results)
        write_table(out, results, backbones, sizes)
    return results


def _best_row(run_dir: Path) -> dict[str, Any]:
    from hpatk.core.run import read_metrics

    rows = read_metrics(run_dir / "metrics.csv")
    if not rows:
        raise HpatkError(f"run '{run_dir}' has no metrics")
    best = max(rows, key=lambda r: (r["val_macro_f1"], -r["epoch"]))
    # runs from before Eq. 8 was recorded lack its column: nan, not a crash
    return {"epoch": best["epoch"], **{k: best.get(k, float("nan")) for k in RESULT_KEYS}}


def write_results(out: Path, results: list[dict[str, Any]]) -> None:
    """``results.csv``: one row per backbone, size and fold."""
    with atomic_open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["backbone", "size", "fold", "epoch", *RESULT_KEYS])
        w.writeheader()
        for r in results:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def summarise(results: list[dict[str, Any]], backbones: list[str],
              sizes: list[int]) -> list[dict[str, Any]]:
    """Mean and sample sd of each metric over folds, per backbone and size."""
    table = []
    for b in backbones:
        for s in sizes:
            rs = [r for r in results if r["backbone"] == b and r["size"] == s]
            if not rs:
                continue
            row: dict[str, Any] = {"backbone": b, "size": s, "folds": len(rs)}
            for k in RESULT_KEYS:
                v = np.array([r[k] for r in rs], dtype=float)
                row[f"{k}_mean"] = float(v.mean())
                row[f"{k}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            table.append(row)
    return table


def write_table(out: Path, results: list[dict[str, Any]], backbones: list[str],
                sizes: list[int]) -> dict[str, Path]:
    """``table1.md``, ``table1.csv`` and ``table1.png`` (macro F1 mean +- sd)."""
    table = summarise(results, backbones, sizes)
    cols = ["backbone", "size", "folds"] + [f"{k}_{s}" for k in RESULT_KEYS for s in ("mean", "sd")]
    with atomic_open(out / "table1.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in table:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    cell = {(r["backbone"], r["size"]): r for r in table}
    n = max((r["folds"] for r in table), default=0)
    lines = ["# Macro F1 per backbone and input size (local CV)", "",
             f"Best validation macro F1 (Kaggle: mean of per-class F1 over the classes "
             f"present in each validation fold; threshold 0.5) per fold, mean +- sd over {n} "
             f"fold{'s' if n != 1 else ''}. table1.csv also has the paper's Eq. 8 macro F1 "
             f"(val_paper_macro_f1), the mean over every class (val_macro_f1_all), micro F1 "
             f"and accuracy of the same checkpoints.", "",
             "| model | " + " | ".join(f"{s} px" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for b in backbones:
        vals = []
        for s in sizes:
            r = cell.get((b, s))
            vals.append(f"{r['val_macro_f1_mean']:.3f} +- {r['val_macro_f1_sd']:.3f}" if r else "")
        lines.append(f"| {b} | " + " | ".join(vals) + " |")
    with atomic_open(out / "table1.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(out / "table1.png", cell, backbones, sizes)
    return {"md": out / "table1.md", "csv": out / "table1.csv", "png": out / "table1.png"}


def _plot(path: Path, cell: dict[tuple[str, int], dict[str, Any]], backbones: list[str],
          sizes: list[int]) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(backbones) + 2), 3.8))
    x = np.arange(len(backbones))
    w = 0.8 / len(sizes)
    for j, s in enumerate(sizes):
        mean = [cell[(b, s)]["val_macro_f1_mean"] if (b, s) in cell else 0 for b in backbones]
        sd = [cell[(b, s)]["val_macro_f1_sd"] if (b, s) in cell else 0 for b in backbones]
        ax.bar(x + (j - (len(sizes) - 1) / 2) * w, mean, w, yerr=sd, capsize=3, label=f"{s} px")
    ax.set_xticks(x, backbones, rotation=20)
    ax.set(xlabel="backbone", ylabel="macro F1 (validation)", ylim=(0, 1),
           title="Backbones x input size")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
