"""The paper's Tables 2 and 3 as a command (``hpatk experiment gan-vs-classic``): classic
augmentation against classic + a synthesizer (or any ``--aug``), on the same folds with the
same seed; macro F1 (Kaggle and the paper's Eq. 8), micro F1 and accuracy on the training and
the validation images; mean +- sd over folds and the paired difference per fold with a
95% paired-t interval over folds. Markdown, CSV and a bar chart."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core import distributed as ddp
from hpatk.core.errors import HpatkError
from hpatk.core.io import atomic_open
from hpatk.core.picture import pyplot, save_figure
from hpatk.core.train_config import TrainConfig

# metric key -> column label; macro_f1 is the Kaggle one (mean per-class F1)
METRICS = {"macro_f1": "macro F1 (Kaggle)", "paper_macro_f1": "macro F1 (Eq. 8)",
           "micro_f1": "micro F1", "accuracy": "accuracy"}
SPLITS = ("train", "val")
BASELINE = "classic"


def run_aug_experiment(base: TrainConfig, augs: list[str], out: str | os.PathLike[str],
                       fold_subset: list[int] | None = None, device: str = "auto",
                       aug_params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train ``classic`` and each of ``augs`` on the folds ``fold_subset`` (all by default).

    Folds are assigned once (``OUT/folds.csv``) and every arm trains with ``base``'s seed
    and settings, differing only in ``aug``. Runs live in ``OUT/runs/<aug>/fold_K``: a
    finished one is reused, an interrupted one resumed. Each run's best macro-F1
    checkpoint is scored at threshold 0.5 on its training images (the real ones it trained
    on, ``--real-per-class`` applied) and its validation images. ``aug_params`` go to the
    compared augmentations (the classic arm keeps ``base``'s).

    Returns:
        One row per (aug, fold, split) with the metrics of :data:`METRICS`.
    """
    from hpatk.core.engine import train
    from hpatk.core.run import read_metrics
    from hpatk.core.train_data import plan_data, write_run_folds

    out = Path(out)
    folds = fold_subset if fold_subset is not None else list(range(base.folds))
    bad = [k for k in folds if not 0 <= k < base.folds]
    if bad:
        raise HpatkError(f"--fold-subset: fold {bad[0]} is not in 0..{base.folds - 1}")
    arms = [BASELINE, *[a for a in dict.fromkeys(augs) if a != BASELINE]]
    if len(arms) < 2:
        raise HpatkError("--aug: give at least one augmentation to compare with classic")
    from hpatk.core.synthetic import resolve_aug

    for a in arms:  # unknown names fail before any training (what hpatk train decides)
        resolve_aug(a, aug_params if a != BASELINE else base.aug_params, base.batch_aug)
    out.mkdir(parents=True, exist_ok=True)
    folds_csv = out / "folds.csv"
    with ddp.main_first("assigning the folds"):
        if ddp.is_main() and not folds_csv.exists():
            write_run_folds(plan_data(base.replace(fold=folds[0])), folds_csv)
    jobs = [(k, aug) for k in folds for aug in arms]
    mine: list[dict[str, Any]] = []
    for k, aug in ddp.spread(jobs):  # under torchrun: this rank's share, round robin
        run_dir = out / "runs" / aug / f"fold_{k}"
        arm = ({"aug": aug} if aug == base.aug or aug == BASELINE
               else {"aug": aug, "aug_params": dict(aug_params or {})})
        cfg = base.override(**arm, fold=k, out=str(run_dir), folds_file=str(folds_csv))
        done = (run_dir / "thresholds.json").exists() and len(
            read_metrics(run_dir / "metrics.csv")) >= cfg.epochs
        with ddp.single_process():  # a job of its own: it writes its run folder
            if not done:
                train(cfg, resume=(run_dir / "last.pt").exists())
            for split, m in score_run(cfg, run_dir, device=device).items():
                mine.append({"aug": aug, "fold": k, "split": split, **m})
        if not ddp.current().enabled:  # one process: results.csv grows job by job
            write_results(out, mine)
    ddp.barrier(ddp.JOIN_WAIT_S)  # every rank's jobs are done
    order = {job: i for i, job in enumerate(jobs)}
    results = sorted((r for part in ddp.all_objects(mine) for r in part),
                     key=lambda r: (order[(r["fold"], r["aug"])], SPLITS.index(r["split"])))
    if ddp.is_main():
        write_results(out, results)
        write_tables(out, results, arms, base.batch_aug)
    return results


def score_run(cfg: TrainConfig, run_dir: Path, device: str = "auto") -> dict[str, dict]:
    """Metrics of ``run_dir/best_macro_f1.pt`` at threshold 0.5 on the fold's training
    images (real only) and validation images: ``{"train": {...}, "val": {...}}`` with the
    keys of :data:`METRICS` and ``epoch``/``images``."""
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.evaluate import predict_rows
    from hpatk.core.metrics import classification_metrics
    from hpatk.core.train_data import plan_data

    ckpt = load_checkpoint(run_dir / "best_macro_f1.pt")
    plan = plan_data(cfg, cfg.folds_file)
    rows = dict(zip(SPLITS, plan.split(int(cfg.fold)), strict=True))
    scores = {}
    for split, r in rows.items():
        p = predict_rows(ckpt, plan.path, np.sort(r), device=device)
        m = classification_metrics(p.targets, p.probs)
        scores[split] = {"epoch": int(ckpt["epoch"]), "images": int(len(r)),
                         **{key: float(m[key]) for key in METRICS}}
    return scores


def write_results(out: Path, results: list[dict[str, Any]]) -> None:
    """``results.csv``: one row per augmentation, fold and split."""
    cols = ["aug", "fold", "split", "epoch", "images", *METRICS]
    with atomic_open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Mean of ``b - a`` over paired folds with its two-sided paired-t interval
    (``scipy.stats.t``, n - 1 degrees of freedom; nan bounds with one fold).

    Shape:
        (F,), (F,) -> {"diffs": (F,), "mean", "low", "high", "p"}.
    """
    from scipy import stats

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"diffs": d, "mean": mean, "low": float("nan"), "high": float("nan"),
                "p": float("nan")}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(stats.ttest_rel(b, a).pvalue) if se > 0 else (1.0 if mean == 0 else 0.0)
    return {"diffs": d, "mean": mean, "low": mean - half, "high": mean + half, "p": p}


def summarise(results: list[dict[str, Any]], arms: list[str]) -> tuple[list[dict], list[dict]]:
    """(table, differences): mean and sample sd per arm, split and metric; and per
    non-classic arm, split and metric the paired difference to classic over the folds
    both finished."""
    table, diffs = [], []
    for aug in arms:
        row: dict[str, Any] = {"aug": aug}
        for split in SPLITS:
            rs = [r for r in results if r["aug"] == aug and r["split"] == split]
            row["folds"] = len(rs)
            for key in METRICS:
                v = np.array([r[key] for r in rs], dtype=float)
                row[f"{split}_{key}_mean"] = float(v.mean()) if len(v) else float("nan")
                row[f"{split}_{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        table.append(row)
    for aug in arms[1:]:
        for split in SPLITS:
            base = {r["fold"]: r for r in results if r["aug"] == BASELINE and r["split"] == split}
            other = {r["fold"]: r for r in results if r["aug"] == aug and r["split"] == split}
            both = sorted(set(base) & set(other))
            for key in METRICS:
                d = paired_difference(np.array([base[f][key] for f in both]),
                                      np.array([other[f][key] for f in both]))
                diffs.append({"aug": aug, "split": split, "metric": key, "folds": both, **d})
    return table, diffs


def arm_label(aug: str, batch_aug: str) -> str:
    """What an arm trains with: ``classic``, ``classic + gan`` (a synthesizer with its batch
    augmentation), ``none (no augmentation)``, or a batch augmentation's name."""
    from hpatk.core.synthetic import resolve_aug

    choice = resolve_aug(aug, None, batch_aug)
    if choice.synth:
        return f"{choice.batch} + {aug}" if choice.batch else aug
    return choice.batch or "none (no augmentation)"


def write_tables(out: Path, results: list[dict[str, Any]], arms: list[str],
                 batch_aug: str) -> dict[str, Path]:
    """``table.md``, ``table.csv``, ``differences.csv`` and ``table.png``; ``batch_aug``:
    the runs' ``--batch-aug``, for the arms' labels."""
    table, diffs = summarise(results, arms)
    cols = ["aug", "folds"] + [f"{s}_{k}_{x}" for s in SPLITS for k in METRICS
                               for x in ("mean", "sd")]
    with atomic_open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in table:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_open(out / "differences.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["aug", "split", "metric", "folds", "fold_differences", "mean", "ci95_low",
                    "ci95_high", "p_paired_t"])
        for d in diffs:
            w.writerow([d["aug"], d["split"], d["metric"], " ".join(map(str, d["folds"])),
                        " ".join(f"{x:.6f}" for x in d["diffs"]), f"{d['mean']:.6f}",
                        f"{d['low']:.6f}", f"{d['high']:.6f}", f"{d['p']:.4g}"])
    n = max((r["folds"] for r in table), default=0)
    head = " | ".join(f"{label} {s}" for label in METRICS.values() for s in ("train", "val"))
    lines = ["# Classic vs synthetic augmentation (the paper's Tables 2 and 3)", "",
             f"Best validation macro-F1 checkpoint of each fold, threshold 0.5; mean +- sd over "
             f"{n} fold{'s' if n != 1 else ''}. train: the real images the model trained on; "
             f"val: the fold's validation images. macro F1 (Kaggle): mean of per-class F1; "
             f"macro F1 (Eq. 8): the paper's F1 of mean precision and mean recall.", "",
             f"| augmentation | {head} |", "|---|" + "---:|" * (2 * len(METRICS))]
    for r in table:
        cells = [f"{r[f'{s}_{k}_mean']:.3f} +- {r[f'{s}_{k}_sd']:.3f}"
                 for k in METRICS for s in SPLITS]
        name = arm_label(r["aug"], batch_aug)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired difference to classic, per fold", "",
              "Mean of (arm - classic) over the folds, 95% paired-t interval over folds "
              "(t with folds - 1 degrees of freedom); an interval containing 0 is no evidence "
              "of a difference.", "",
              "| augmentation | split | metric | per fold | mean | 95% CI | p (paired t) |",
              "|---|---|---|---|---:|---|---:|"]
    for d in diffs:
        per = ", ".join(f"{x:+.3f}" for x in d["diffs"])
        ci = (f"[{d['low']:+.3f}, {d['high']:+.3f}]" if np.isfinite(d["low"]) else "n/a (1 fold)")
        lines.append(f"| {d['aug']} | {d['split']} | {METRICS[d['metric']]} | {per} | "
                     f"{d['mean']:+.3f} | {ci} | {d['p']:.3g} |")
    with atomic_open(out / "table.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(out / "table.png", table, batch_aug)
    return {"md": out / "table.md", "csv": out / "table.csv",
            "differences": out / "differences.csv", "png": out / "table.png"}


def _plot(path: Path, table: list[dict[str, Any]], batch_aug: str) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    x = np.arange(len(METRICS))
    w = 0.8 / max(len(table), 1)
    for ax, split in zip(axes, SPLITS, strict=True):
        for j, r in enumerate(table):
            mean = [r[f"{split}_{k}_mean"] for k in METRICS]
            sd = [r[f"{split}_{k}_sd"] for k in METRICS]
            label = arm_label(r["aug"], batch_aug)
            ax.bar(x + (j - (len(table) - 1) / 2) * w, mean, w, yerr=sd, capsize=3, label=label)
        ax.set_xticks(x, list(METRICS.values()), rotation=15)
        ax.set(ylim=(0, 1), title="training images" if split == "train" else "validation")
    axes[0].set_ylabel("mean +- sd over folds")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
