"""The run folder: ``metrics.csv``, ``thresholds.json``, RNG state for resume, and the
cross-validation summary of a ``--fold all`` run (``summary.md`` / ``summary.csv``).

Layout (DESIGN.md)::

    RUN/config.yaml  metrics.csv  folds.csv  best_loss.pt  best_macro_f1.pt
        best_micro_f1.pt  last.pt  thresholds.json  report.md  *.png
    RUN/fold_K/...   (one such folder per fold with ``--fold all``)
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError
from hpatk.core.io import atomic_open

# val_macro_f1: Kaggle (mean per-class F1) over the classes present in the validation fold
# (val_classes_present of them); val_macro_f1_all: the same over every class of the model
# (absent ones score 0); val_paper_macro_f1: the paper's Eq. 8 over the classes present
METRIC_COLUMNS = ("epoch", "lr", "batch_size", "train_loss", "val_loss", "val_macro_f1",
                  "val_micro_f1", "val_accuracy", "val_paper_macro_f1", "val_macro_f1_all",
                  "val_classes_present", "time")
CHECKPOINT_NAMES = ("best_macro_f1", "best_loss", "best_micro_f1", "last")
# checkpoint file -> (metric it tracks, True if larger is better)
BEST = {"best_loss": ("val_loss", False), "best_macro_f1": ("val_macro_f1", True),
        "best_micro_f1": ("val_micro_f1", True)}


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as dicts of floats (``epoch``/``batch_size`` as ints)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            d: dict[str, Any] = {k: float(v) for k, v in row.items() if v not in ("", None)}
            for k in ("epoch", "batch_size", "val_classes_present"):
                if k in d:
                    d[k] = int(d[k])
            rows.append(d)
    return rows


def write_metrics(path: str | os.PathLike[str], rows: list[dict[str, float]]) -> None:
    """Rewrite ``metrics.csv`` atomically (it is small: one row per epoch)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_thresholds(path: str | os.PathLike[str], classes: list[int], names: list[str],
                     thresholds: list[float], **info: Any) -> None:
    """``thresholds.json``: per-class decision thresholds and how they were tuned."""
    d = {"classes": classes, "class_names": names,
         "thresholds": [round(float(t), 6) for t in thresholds], **info}
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
        f.write("\n")


def read_thresholds(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HpatkError(f"thresholds '{path}' cannot be read: {exc}") from exc


# -- RNG state, stored as tensors/lists so that weights_only loads accept it -------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain data."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class FoldResult:
    """What one fold's training produced."""

    run_dir: Path
    fold: int
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)
    epochs_done: int = 0
    # the best macro-F1 model on the validation images: the run's out-of-fold predictions
    val_ids: list[str] = field(default_factory=list)
    val_probs: np.ndarray | None = None  # (M, K) float32
    val_targets: np.ndarray | None = None  # (M, K) uint8


def write_fold_summary(out: Path, results: list[FoldResult],
                       oof: dict[str, Any] | None = None) -> None:
    """``summary.md`` / ``summary.csv``: each fold's best validation metrics, mean +- sd,
    and the out-of-fold metrics (``oof``, from :func:`hpatk.core.oof.write_oof`)."""
    keys = ("val_macro_f1", "val_macro_f1_all", "val_micro_f1", "val_accuracy",
            "val_paper_macro_f1")
    rows = [{"fold": r.fold, "epoch": r.best["best_macro_f1"]["epoch"],
             **{k: r.best["best_macro_f1"].get(k, float("nan")) for k in keys}}
            for r in results]
    with atomic_open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["fold", "epoch", *keys])
        w.writeheader()
        w.writerows(rows)
    k = len(results[0].thresholds) if results else 0
    lines = ["# Cross-validation summary (best macro-F1 checkpoint per fold)", "",
             f"Macro F1 (Kaggle: mean of per-class F1) over the classes present in each "
             f"validation fold; 'all {k}': the same over every class of the model (absent "
             f"classes score 0); Eq. 8: the paper's F1 of mean precision and recall.", "",
             f"| fold | epoch | macro F1 (Kaggle) | macro F1 (all {k}) | micro F1 | accuracy "
             f"| macro F1 (Eq. 8) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join([str(r["fold"]), str(r["epoch"])]
                                + [f"{r[key]:.4f}" for key in keys]) + " |" for r in rows]
    stats = [np.array([r[key] for r in rows]) for key in keys]
    lines.append("| mean +- sd | | " + " | ".join(
        f"{s.mean():.4f} +- {s.std(ddof=1) if len(s) > 1 else 0.0:.4f}" for s in stats) + " |")
    if oof:
        lines += ["", "## Out-of-fold", "", *oof["lines"]]
    with atomic_open(out / "summary.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def run_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """``metrics.csv`` of a run folder, as rows."""
    return read_metrics(Path(run_dir) / "metrics.csv")
