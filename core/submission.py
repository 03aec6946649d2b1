"""Kaggle submission files: ``Id,Predicted`` with space-separated class indices."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from hpatk.core.classes import NUM_CLASSES
from hpatk.core.errors import DataError


def write_submission(path: str | os.PathLike[str], ids: Sequence[str],
                     labels_per_image: Iterable[Iterable[int]] | np.ndarray, *,
                     classes: Sequence[int] | None = None) -> Path:
    """Write a Kaggle HPA submission atomically.

    Args:
        path: the CSV to write.
        ids: image Ids, in output order.
        labels_per_image: class indices per image, or a 0/1 matrix whose columns are
            ``classes`` (default: 0..K-1).
        classes: the class index of each matrix column (e.g. TOP5 for a 5-class model).

    Returns:
        ``path``. Labels are sorted ascending; an image with no label gets an empty field.

    Shape:
        labels_per_image as a matrix: (N, K) with N == len(ids).
    """
    from hpatk.core.data import ID_PATTERN
    from hpatk.core.io import atomic_open

    if isinstance(labels_per_image, np.ndarray):
        if labels_per_image.ndim != 2:
            raise DataError(f"{path}: a label matrix must be (N, K), got {labels_per_image.shape}")
        cols = np.asarray(classes if classes is not None
                          else range(labels_per_image.shape[1]))
        if len(cols) != labels_per_image.shape[1]:
            raise DataError(f"{path}: {labels_per_image.shape[1]} columns but "
                            f"{len(cols)} classes")
        rows = [cols[np.flatnonzero(r)].tolist() for r in labels_per_image]
    else:
        rows = [list(r) for r in labels_per_image]
    if len(rows) != len(ids):
        raise DataError(f"{path}: {len(ids)} Ids but {len(rows)} label rows")
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Id", "Predicted"])
        for image_id, labels in zip(ids, rows, strict=True):
            if not ID_PATTERN.fullmatch(str(image_id)):
                raise DataError(f"{path}: invalid Id {str(image_id)[:60]!r}")
            bad = [c for c in labels if not 0 <= int(c) < NUM_CLASSES]
            if bad:
                raise DataError(f"{path}: Id {image_id!r}: label {bad[0]} is outside "
                                f"0..{NUM_CLASSES - 1}")
            w.writerow([image_id, " ".join(str(int(c)) for c in sorted(set(labels)))])
    return path
