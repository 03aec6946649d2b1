"""Multilabel-stratified K-fold splits (iterative stratification, Sechidis et al. 2011).

The Kaggle HPA winners split this way: with 28 very unequal classes, a plain or
first-label-stratified K-fold leaves rare classes out of whole folds. We use the
``iterative-stratification`` package rather than a hand-written port.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hpatk.core.errors import DataError


def fold_label(fold: int | None) -> str:
    """How a report names the images something was trained or evaluated on: ``"fold 2"``,
    or ``"all images (no fold)"`` for None."""
    return "all images (no fold)" if fold is None else f"fold {fold}"


def make_folds(targets: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Assign every sample to one of ``k`` folds, stratified over all label columns.

    Args:
        targets: 0/1 label matrix.
        k: number of folds (2 <= k <= N).
        seed: shuffling seed; the same seed gives the same folds.

    Returns:
        fold index in 0..k-1 per sample (int64).

    Shape:
        targets (N, K) -> (N,)
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = np.asarray(targets)
    if y.ndim != 2:
        raise DataError(f"targets must be a (N, K) matrix, got shape {y.shape}")
    if not 2 <= k <= len(y):
        raise DataError(f"--k must be between 2 and the number of images ({len(y)}), not {k}")
    y = (y > 0).astype(int)
    if y.shape[1] == 1:  # sklearn calls one column "binary"; its complement changes nothing
        y = np.hstack([y, 1 - y])
    folds = np.full(len(y), -1, np.int64)
    mskf = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, val) in enumerate(mskf.split(np.zeros((len(y), 1)), y)):
        folds[val] = i
    return folds


def fold_shares(targets: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Share of each fold's images that carry each class.

    Shape: targets (N, K), folds (N,) -> (k, K)
    """
    y = np.asarray(targets, np.float64)
    return np.stack([y[folds == f].mean(axis=0) for f in range(int(folds.max()) + 1)])


def write_folds(path: str | os.PathLike[str], ids: Sequence[str], folds: np.ndarray) -> Path:
    """Write ``Id,fold`` rows atomically."""
    from hpatk.core.io import atomic_open

    if len(ids) != len(folds):
        raise DataError(f"{path}: {len(ids)} Ids but {len(folds)} fold numbers")
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Id", "fold"])
        w.writerows(zip(ids, (int(x) for x in folds), strict=True))
    return path


def read_folds(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read ``Id,fold`` rows into {Id: fold}, in file order.

    Raises:
        DataError: a missing file or column, a non-integer or negative fold, a duplicate Id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"Id", "fold"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected the columns Id,fold "
                            f"(header: {','.join(reader.fieldnames or [])})")
        out: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            image_id, fold = (row["Id"] or "").strip(), (row["fold"] or "").strip()
            if not fold.isdigit():
                raise DataError(f"{path}:{line}: Id {image_id!r}: fold {fold!r} is not a "
                                "non-negative integer")
            if image_id in out:
                raise DataError(f"{path}:{line}: Id {image_id!r}: duplicate Id")
            out[image_id] = int(fold)
    if not out:
        raise DataError(f"{path}: has a header but no rows")
    return out


def assign_folds(labels: np.ndarray, ids: Sequence[str], classes: Sequence[int], *, k: int,
                 seed: int, folds_file: str | os.PathLike[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The rows a run over ``classes`` uses and the fold of each: the one place folds are
    decided (``hpatk train``, ``hpatk gan train --fold``, experiments).

    Rows are those carrying at least one of ``classes``; folds are multilabel-stratified
    over those columns (:func:`make_folds` with ``k`` and ``seed``), or read from
    ``folds_file`` (``Id,fold``).

    Returns:
        (rows, folds): cache row indices (M,) and their folds (M,), int64.

    Shape:
        labels (N, 28), ids (N,)
    """
    y = np.asarray(labels)
    cols = list(classes)
    rows = np.flatnonzero(y[:, cols].any(axis=1))
    if len(rows) < k * 2:
        raise DataError(f"only {len(rows)} images carry one of the {len(cols)} selected "
                        f"classes; too few for {k} folds")
    if folds_file:
        table = read_folds(folds_file)
        missing = [ids[i] for i in rows if ids[i] not in table]
        if missing:
            raise DataError(f"folds file '{folds_file}' has no row for Id '{missing[0]}' "
                            f"({len(missing)} missing)")
        folds = np.array([table[ids[i]] for i in rows], dtype=np.int64)
        if folds.max() >= k:
            raise DataError(f"folds file '{folds_file}' has folds outside 0..{k - 1}")
        return rows, folds
    return rows, make_folds(y[rows][:, cols], k=k, seed=seed)
