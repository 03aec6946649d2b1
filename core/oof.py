"""Out-of-fold predictions of an all-folds run (``hpatk train --fold all``).

Every training image is predicted by the one fold model that did not train on it (its
best macro-F1 checkpoint): ``RUN/oof.csv`` (Id, fold, Target, one probability column per
class). Thresholds tuned on this whole set (every image, not one fold's fifth) are the
run's ``RUN/thresholds.json``: the thresholds an exported fold ensemble carries. The
OOF metrics go into ``RUN/report.md`` and ``RUN/summary.md``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError

OOF_FILE = "oof.csv"


@dataclass
class OutOfFold:
    """Out-of-fold predictions, one row per training image.

    Shape:
        folds: (N,) int; probs: (N, K) float32; targets: (N, K) uint8.
    """

    ids: list[str]
    folds: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    classes: list[int]


def collect_oof(results: list[Any], classes: list[int],
                expected_ids: list[str] | None = None) -> OutOfFold:
    """Concatenate each fold's validation predictions (``FoldResult.val_*``).

    Raises:
        HpatkError: an image predicted twice, or (with ``expected_ids``) one missing.
    """
    ids = [i for r in results for i in r.val_ids]
    folds = np.concatenate([np.full(len(r.val_ids), r.fold, dtype=int) for r in results])
    probs = np.concatenate([np.asarray(r.val_probs, np.float32) for r in results])
    targets = np.concatenate([np.asarray(r.val_targets, np.uint8) for r in results])
    if len(set(ids)) != len(ids):
        raise HpatkError("out-of-fold: an image lies in two validation folds")
    if expected_ids is not None and set(ids) != set(expected_ids):
        missing = sorted(set(expected_ids) - set(ids))
        raise HpatkError(f"out-of-fold: {len(missing)} training images have no prediction "
                         f"(e.g. '{missing[0] if missing else '?'}')")
    return OutOfFold(ids, folds, probs, targets, list(classes))


def write_oof_csv(path: str | os.PathLike[str], oof: OutOfFold) -> Path:
    """``oof.csv``: Id, fold, Target (class indices), ``p_<class>`` per class."""
    from hpatk.core.io import atomic_open

    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Id", "fold", "Target", *[f"p_{c}" for c in oof.classes]])
        for i, image_id in enumerate(oof.ids):
            target = " ".join(str(c) for c, t in zip(oof.classes, oof.targets[i], strict=True)
                              if t)
            w.writerow([image_id, int(oof.folds[i]), target,
                        *[f"{p:.7g}" for p in oof.probs[i]]])
    return Path(path)


def read_oof(path: str | os.PathLike[str]) -> OutOfFold:
    """Read an ``oof.csv`` written by :func:`write_oof_csv`."""
    path = Path(path)
    if not path.is_file():
        raise HpatkError(f"'{path}' does not exist (only --fold all runs have out-of-fold "
                         f"predictions)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header[:3] != ["Id", "fold", "Target"] or not all(
                h.startswith("p_") for h in header[3:]):
            raise HpatkError(f"'{path}' is not an hpatk oof.csv (header {','.join(header)})")
        classes = [int(h[2:]) for h in header[3:]]
        col = {c: j for j, c in enumerate(classes)}
        ids, folds, probs, targets = [], [], [], []
        for row_no, row in enumerate(reader, 2):
            try:
                ids.append(row[0])
                folds.append(int(row[1]))
                t = np.zeros(len(classes), np.uint8)
                for c in row[2].split():
                    t[col[int(c)]] = 1
                targets.append(t)
                probs.append([float(v) for v in row[3:]])
            except (ValueError, KeyError, IndexError):
                raise HpatkError(f"'{path}' row {row_no} is malformed") from None
    k = len(classes)
    return OutOfFold(ids, np.asarray(folds, int), np.asarray(probs, np.float32).reshape(-1, k),
                     np.asarray(targets, np.uint8).reshape(-1, k), classes)


def oof_metrics(oof: OutOfFold) -> dict[str, Any]:
    """Thresholds tuned on the whole OOF set and the metrics at 0.5 and with them.

    Returns:
        ``{"thresholds": (K,) float64, "at_half": dict, "tuned": dict, "per_class":
        (K,), "per_class_tuned": (K,), "support": (K,) int}``; the dicts are
        :func:`hpatk.core.metrics.predicted_metrics`.
    """
    from hpatk.core.evaluate import evaluation_of
    from hpatk.core.metrics import tune_thresholds

    thr = np.asarray(tune_thresholds(oof.targets, oof.probs), dtype=np.float64)
    ev = evaluation_of("out-of-fold", oof.probs, oof.targets, oof.classes, thr)
    return {"thresholds": thr, "at_half": ev.at_half, "tuned": ev.tuned,
            "per_class": ev.per_class, "per_class_tuned": ev.per_class_tuned,
            "support": ev.support}


def write_oof(out: Path, plan: Any, results: list[Any], cfg: Any) -> dict[str, Any]:
    """Write ``oof.csv``, the OOF-tuned ``thresholds.json`` and the OOF ``report.md`` of
    an all-folds run in ``out``.

    Returns:
        :func:`oof_metrics` plus ``"lines"``: the markdown summary lines.
    """
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.metrics import describe_macro_f1
    from hpatk.core.report import write_report
    from hpatk.core.run import write_thresholds

    classes = [int(c) for c in plan.classes]
    names = [CLASS_NAMES[c] for c in classes]
    oof = collect_oof(results, classes, [plan.ids[r] for r in plan.rows])
    write_oof_csv(out / OOF_FILE, oof)
    m = oof_metrics(oof)
    at_half, tuned = m["at_half"], m["tuned"]
    write_thresholds(out / "thresholds.json", classes, names, m["thresholds"].tolist(),
                     source="out-of-fold", checkpoint="fold_*/best_macro_f1.pt",
                     folds=[int(r.fold) for r in results], images=len(oof.ids),
                     macro_f1_at_0_5=round(at_half["macro_f1"], 6),
                     macro_f1_tuned=round(tuned["macro_f1"], 6),
                     macro_f1_all_tuned=round(tuned["macro_f1_all"], 6),
                     classes_present=tuned["classes_present"],
                     note=f"tuned on the out-of-fold predictions of all {len(oof.ids)} "
                          f"images (each by the fold model that did not train on it)")
    lines = [f"{len(oof.ids)} images, each predicted by the fold model that did not train on "
             f"it ({OOF_FILE}); thresholds tuned on all of them (thresholds.json).", "",
             f"- threshold 0.5: {describe_macro_f1(at_half)}, micro F1 "
             f"{at_half['micro_f1']:.4f}",
             f"- out-of-fold thresholds: {describe_macro_f1(tuned)}, micro F1 "
             f"{tuned['micro_f1']:.4f} (tuned and scored on the same images: optimistic)"]
    settings = {"backbone": cfg.backbone, "classes": cfg.classes, "size": plan.size,
                "stains": ",".join(plan.stains), "enhance": plan.enhance.get("name"),
                "aug": cfg.aug, "loss": cfg.loss, "folds": f"{len(results)} (all)",
                "images": len(oof.ids)}
    best = {"out-of-fold, threshold 0.5": _row(at_half),
            "out-of-fold, OOF thresholds": _row(tuned)}
    write_report(out, title=f"hpatk run: {cfg.backbone}, all {len(results)} folds, "
                 f"out-of-fold", rows=[], settings=settings, best=best, class_names=names,
                 f1=list(m["per_class"]), f1_tuned=list(m["per_class_tuned"]),
                 thresholds=m["thresholds"].tolist(), support=m["support"].tolist(),
                 evaluated="the out-of-fold predictions",
                 notes=[f"Out-of-fold: each of the {len(oof.ids)} images predicted by the "
                        f"fold model that did not train on it ({OOF_FILE}).",
                        "Each fold's own report is in fold_K/report.md; summary.md "
                        "compares the folds."])
    return {**m, "lines": lines}


def _row(m: dict[str, Any]) -> dict[str, Any]:
    return {"val_macro_f1": m["macro_f1"], "val_macro_f1_all": m["macro_f1_all"],
            "val_paper_macro_f1": m["paper_macro_f1"],
            "val_micro_f1": m["micro_f1"], "val_accuracy": m["accuracy"]}
