"""A synthetic HPA benchmark in the exact Kaggle layout (``hpatk data synth``).

``make_synthetic(out, n)`` writes ``train.csv`` + ``train/{Id}_{stain}.png`` and a
small test split (``sample_submission.csv`` + ``test/``, ground truth in
``test_labels.csv``). Images are rendered by :mod:`hpatk.core.synth_cells`; labels
follow the Kaggle train counts:

* each class c is drawn independently with probability ``s * p_c`` (``p_c`` = Kaggle
  count / 31,072), and an image left without labels gets one class drawn in proportion
  to the counts. ``s`` is solved so the marginals equal ``p_c`` exactly, which gives the
  Kaggle mean of 1.63 labels per image, Nucleoplasm the most frequent class and Rods &
  rings the rarest;
* every class then appears in at least ``min(5, n // 50)`` images (5 from n = 250 on):
  missing occurrences are added as an extra label on randomly chosen images, because a
  class with no example (Rods & rings would expect 0.7 images in 2,000) cannot be trained
  or scored. Small datasets therefore over-represent the rarest classes.

Every image is rendered from its own seed (``SeedSequence([seed, split, index])``), so
the dataset is identical whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.classes import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_IMAGES, STAINS, parse_classes
from hpatk.core.errors import HpatkError
from hpatk.core.io import (
    current_umask,
    is_write_error,
    remove_stale_temps,
    stale_temps,
    write_error,
    writer_lock,
)
from hpatk.core.picture import composite
from hpatk.core.progress import progress

_SPLIT_CODE = {"train": 0, "test": 1}


@cache
def _label_model(classes: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """Kaggle frequencies of ``classes`` and the scale ``s`` that keeps them exact.

    The marginal of class c is ``s p_c + P(empty | s) q_c`` with ``q = p / sum(p)``;
    ``s + P(empty | s) / sum(p) = 1`` makes it ``p_c``. Solved by bisection.
    """
    p = np.array([KAGGLE_TRAIN_COUNTS[c] for c in classes], np.float64) / KAGGLE_TRAIN_IMAGES
    total = p.sum()
    lo, hi = 0.0, 1.0
    for _ in range(60):
        s = (lo + hi) / 2
        if s + np.prod(1 - s * p) / total > 1:
            hi = s
        else:
            lo = s
    return p, (lo + hi) / 2


def min_count_per_class(n: int) -> int:
    """The guaranteed number of images of every class in an ``n``-image split."""
    return min(5, n // 50)


def sample_labels(n: int, seed: int = 0, classes: str | Sequence[int] = "all",
                  min_count: int | None = None) -> list[tuple[int, ...]]:
    """Draw ``n`` label sets with Kaggle frequencies (see the module docstring).

    Args:
        n: number of images.
        seed: random seed.
        classes: ``"all"``, ``"top5"`` or class indices; labels are 28-class indices.
        min_count: images per class at least; default ``min_count_per_class(n)``.

    Returns:
        one sorted tuple of class indices per image, each non-empty.
    """
    cls = parse_classes(classes) if isinstance(classes, str) else tuple(classes)
    p, s = _label_model(tuple(cls))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    hits = rng.random((n, len(cls))) < s * p
    empty = ~hits.any(axis=1)
    hits[np.flatnonzero(empty), rng.choice(len(cls), int(empty.sum()), p=p / p.sum())] = True
    need = min_count_per_class(n) if min_count is None else min(min_count, n)
    for j in np.argsort(p):  # rarest first
        missing = need - int(hits[:, j].sum())
        if missing > 0:
            free = np.flatnonzero(~hits[:, j])
            hits[rng.choice(free, missing, replace=False), j] = True
    return [tuple(int(cls[j]) for j in np.flatnonzero(row)) for row in hits]


def synthetic_id(seed: int, split: str, index: int) -> str:
    """A Kaggle-style Id (8-4-4-4-12 hex) that is a pure function of its inputs."""
    h = hashlib.sha1(f"hpatk-synth:{seed}:{split}:{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _render_job(job: tuple[str, str, int, int, int, tuple[int, ...], int]) -> None:
    """Render one image and write its four stain PNGs (runs in a worker process)."""
    import cv2
    from hpatk.core.synth_cells import render

    folder, image_id, seed, split_code, index, labels, size = job
    img = render(labels, size, np.random.SeedSequence([seed, split_code, index]))
    for stain, plane in zip(STAINS, img, strict=True):
        path = os.path.join(folder, f"{image_id}_{stain}.png")
        ok, png = cv2.imencode(".png", plane, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise HpatkError(f"cannot encode {path} as PNG")
        with open(path, "wb") as f:  # a full disk is an OSError with its errno (not False)
            f.write(png.tobytes())


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already: no nested thread pools


def default_workers(n: int, size: int) -> int:
    """Processes worth starting: one below ~3 s of single-core work (a spawned worker
    costs ~0.5 s to start). Per image, measured: ~11 ms + 69 ms x (size / 512)^2."""
    work_s = n * (0.011 + 0.069 * (size / 512) ** 2)
    return 1 if work_s < 3 else max(1, min(os.cpu_count() or 1, 8))


def make_synthetic(out: str | os.PathLike[str], n: int = 2000, size: int = 512, seed: int = 0,
                   classes: str = "all", workers: int | None = None, *,
                   n_test: int | None = None, overwrite: bool = False,
                   preview: str | os.PathLike[str] | None = None) -> Path:
    """Write a synthetic dataset in the Kaggle HPA layout.

    Args:
        out: folder to create (must not exist or be empty, unless ``overwrite``).
        n: training images.
        size: image side in pixels (every stain is ``size`` x ``size`` uint8).
        seed: random seed; the same seed gives the same files.
        classes: ``"all"`` (28 classes) or ``"top5"`` (the paper's five classes).
        workers: processes; ``None`` picks one for small jobs, else the core count.
        n_test: test images (default ``max(4, n // 10)``; 0 writes no test split).
        overwrite: replace an existing non-empty ``out``.
        preview: also write a contact sheet of a few training images to this PNG.

    Returns:
        ``out`` as a Path. Written into a temporary folder beside ``out`` and renamed
        when complete: an interrupted run leaves nothing behind.

    Shape:
        every ``{Id}_{stain}.png`` is (size, size) uint8.
    """
    out = Path(out)
    if n < 1:
        raise HpatkError(f"--n must be at least 1, not {n}")
    if not 8 <= size <= 4096:
        raise HpatkError(f"--size must be between 8 and 4096, not {size}")
    if workers is not None and workers < 1:
        raise HpatkError(f"--workers must be at least 1, not {workers}")
    if out.exists() and not out.is_dir():
        raise HpatkError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HpatkError(f"{out} exists and is not empty (use --overwrite to replace it)")
    n_test = max(4, n // 10) if n_test is None else n_test
    train_labels = sample_labels(n, seed, classes)
    test_labels = sample_labels(n_test, seed + 1_000_003, classes, min_count=0)
    workers = default_workers(n + n_test, size) if workers is None else workers

    with writer_lock(out, wait=False, what="hpatk data synth", remove=True):
        remove_stale_temps(stale_temps(out))  # of a killed run: we hold the lock
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp",
                                        dir=out.parent))
        except OSError as exc:
            raise write_error(exc, out) from None
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; OUT is a normal folder
            jobs = []
            for split, labels in (("train", train_labels), ("test", test_labels)):
                if not labels:  # --n-test 0: no test split (a header-only CSV is invalid)
                    continue
                (tmp / split).mkdir()
                ids = [synthetic_id(seed, split, i) for i in range(len(labels))]
                for i, (image_id, lab) in enumerate(zip(ids, labels, strict=True)):
                    jobs.append((str(tmp / split), image_id, seed, _SPLIT_CODE[split], i, lab,
                                 size))
                _write_csvs(tmp, split, ids, labels)
            _run_jobs(jobs, workers)
            if preview is not None:
                write_preview(tmp, preview)
            _replace_dir(tmp, out, overwrite)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and is_write_error(exc):
                raise write_error(exc, out) from None
            raise
    return out


def _write_csvs(folder: Path, split: str, ids: list[str], labels: list[tuple[int, ...]]
                ) -> None:
    def write(name: str, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    targets = [" ".join(map(str, lab)) for lab in labels]
    if split == "train":
        write("train.csv", ("Id", "Target"), list(zip(ids, targets, strict=True)))
    else:  # Kaggle's sample submission predicts class 0 for everything
        write("sample_submission.csv", ("Id", "Predicted"), [(i, "0") for i in ids])
        write("test_labels.csv", ("Id", "Target"), list(zip(ids, targets, strict=True)))


def _run_jobs(jobs: list, workers: int) -> None:
    if workers <= 1:
        for job in progress(jobs, desc="synth", unit="img"):
            _render_job(job)
        return
    from hpatk.core.pool import process_pool, submit

    chunk = max(1, min(16, len(jobs) // (workers * 4)))
    with process_pool(workers, _worker_init) as pool:  # stops at once on Ctrl-C
        # submit, not pool.map: map cancels its futures on Ctrl-C, and a cancelled future
        # makes the pool's manager thread fail (InvalidStateError) when it stops
        futures = [submit(pool, _render_jobs, jobs[i:i + chunk])
                   for i in range(0, len(jobs), chunk)]
        for _ in progress(_images_done(futures), desc="synth", total=len(jobs), unit="img"):
            pass


def _render_jobs(jobs: list) -> int:
    for job in jobs:
        _render_job(job)
    return len(jobs)


def _images_done(futures: list) -> Any:
    for future in futures:
        yield from range(future.result())


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder into place; an old ``out`` is removed only afterwards."""
    old = None
    if out.exists():
        if any(out.iterdir()) and not overwrite:  # appeared while we were rendering
            raise HpatkError(f"{out} exists and is not empty (use --overwrite to replace it)")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_preview(data_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                  n: int = 8, tile: int = 160, cols: int = 2) -> Path:
    """A contact sheet of the first ``n`` training images of a Kaggle-layout folder.

    Each sample is two tiles: the raw composite as stored (red = microtubules + ER,
    green = protein, blue = nucleus; dim, as in HPA) and the green stain after CLAHE,
    with its class names underneath; ``cols`` samples per row. Written atomically.

    Returns:
        ``out`` as a Path.
    """
    import cv2
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.io import atomic_open

    data_dir = Path(data_dir)
    with open(data_dir / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    if not rows:
        raise HpatkError(f"{data_dir / 'train.csv'} has no rows to preview")
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    chars = (2 * tile - 8) // 7  # what fits on a caption line at this font size
    cells = []
    for row in rows:
        g, r, b, y = (cv2.imread(str(data_dir / "train" / f"{row['Id']}_{s}.png"),
                                 cv2.IMREAD_GRAYSCALE) for s in STAINS)
        comp = np.ascontiguousarray(composite(np.stack([g, r, b, y]), STAINS)[..., ::-1])  # BGR
        green = cv2.cvtColor(clahe.apply(g), cv2.COLOR_GRAY2BGR)
        pair = [cv2.resize(im, (tile, tile), interpolation=cv2.INTER_AREA)
                for im in (comp, green)]
        caption = np.zeros((34, 2 * tile, 3), np.uint8)
        lines, line = [], ""
        for name in (CLASS_NAMES[int(t)] for t in row["Target"].split()):
            if line and len(line) + len(name) + 2 > chars:
                lines.append(line + ",")
                line = ""
            line = f"{line}, {name}" if line else name
        lines.append(line)
        for k, text in enumerate(lines[:2]):
            cv2.putText(caption, text[:chars], (4, 14 + 15 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(np.vstack([np.hstack(pair), caption]))
    cols = max(1, min(cols, len(cells)))
    while len(cells) % cols:
        cells.append(np.zeros_like(cells[0]))
    gap = 6
    height, width = cells[0].shape[:2]
    n_rows = len(cells) // cols
    sheet = np.full((n_rows * (height + gap) - gap, cols * (width + gap) - gap, 3), 40, np.uint8)
    for k, cell in enumerate(cells):
        i, j = divmod(k, cols)
        sheet[i * (height + gap):i * (height + gap) + height,
              j * (width + gap):j * (width + gap) + width] = cell
    ok, png = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - PNG encoding of uint8 BGR does not fail
        raise HpatkError(f"cannot encode the preview {out}")
    out = Path(out)
    with atomic_open(out, "wb") as f:
        f.write(png.tobytes())
    return out
