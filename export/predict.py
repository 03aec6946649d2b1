"""``hpatk predict``: an exported classifier over a folder of stain PNGs -> a Kaggle
submission.

Images are decoded with :func:`hpatk.core.data.decode_stains` and preprocessed with the
model's recorded enhancement by :func:`hpatk.core.preprocess.preprocess`, the function
the cache uses, so ``hpatk predict`` sees exactly what ``hpatk evaluate`` sees.
:func:`load_image` is that path, and ``hpatk serve`` calls it too.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.errors import DataError, HpatkError

if TYPE_CHECKING:
    from hpatk.export.runtime import OnnxClassifier

@dataclass
class FolderPrediction:
    """Predictions for a list of samples, in order.

    Shape:
        probs: (N, K) float32; labels: N lists of class indices.
    """

    ids: list[str]
    probs: np.ndarray
    labels: list[list[int]]


def select_samples(images_dir: str | os.PathLike[str], *, split: str = "test",
                   ids_csv: str | os.PathLike[str] | None = None,
                   stains: Sequence[str] = ("green", "red", "blue", "yellow")) -> list[Any]:
    """The samples to predict, as :class:`hpatk.core.data.SampleRef`.

    With ``ids_csv``: its ``Id`` column, images in ``IMAGES_DIR/<split>/`` (or
    ``IMAGES_DIR`` itself). Else the Kaggle layout (``sample_submission.csv`` + ``test/``
    or ``train.csv`` + ``train/``) when the split's CSV exists, else every
    ``{Id}_{first stain}.png`` in ``IMAGES_DIR``. Every stain file must exist.

    Raises:
        DataError: missing folder, unreadable CSV, no images, or a missing stain file.
    """
    from hpatk.core.data import ID_PATTERN, SPLITS, SampleRef, read_kaggle

    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"IMAGES_DIR '{folder}' is not a folder")
    root = folder / split if (folder / split).is_dir() else folder
    if ids_csv is not None:
        samples = [SampleRef(id=i, labels=(), root=root) for i in read_ids(ids_csv)]
    elif (folder / SPLITS[split]).is_file():
        return list(read_kaggle(folder, split=split, stains=tuple(stains)))
    else:
        suffix = f"_{stains[0]}.png"
        ids = sorted(i for p in folder.glob(f"*{suffix}")
                     if ID_PATTERN.fullmatch(i := p.name[:-len(suffix)]))
        if not ids:
            raise DataError(f"'{folder}' has no {SPLITS[split]} and no *{suffix} images")
        samples = [SampleRef(id=i, labels=(), root=folder) for i in ids]
    bad = next((s.id for s in samples if not ID_PATTERN.fullmatch(s.id)), None)
    if bad is not None:
        raise DataError(f"--ids '{ids_csv}': invalid Id {bad[:60]!r} (letters, digits, '_' "
                        f"and '-' only)")
    missing = [p for s in samples for p in s.paths(stains) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        raise DataError(f"stain image '{missing[0]}' does not exist{more}")
    return samples


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """The ``Id`` column of a CSV (a Kaggle sample_submission.csv, for example)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--ids '{path}' does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "Id" not in reader.fieldnames:
                raise DataError(f"--ids '{path}' has no 'Id' column (header: "
                                f"{','.join(reader.fieldnames or [])})")
            ids = []
            for row_no, row in enumerate(reader, 2):
                value = (row.get("Id") or "").strip()
                if not value:
                    raise DataError(f"--ids '{path}' row {row_no}: empty Id")
                ids.append(value)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--ids '{path}' is not a readable CSV: {exc}") from None
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"--ids '{path}': Id '{i}' appears more than once")
        seen.add(i)
    if not ids:
        raise DataError(f"--ids '{path}' lists no Ids")
    return ids


def load_image(clf: OnnxClassifier,
               image: Any | Mapping[str, bytes] | np.ndarray) -> np.ndarray:
    """Decode -> enhance -> resize: the one input path of ``hpatk predict`` and
    ``hpatk serve``.

    Args:
        clf: the model (its stains, recorded enhancement and input size).
        image: a :class:`hpatk.core.data.SampleRef` (stain files on disk), a mapping
            ``stain -> encoded image bytes`` (PNG/JPEG/TIFF; e.g. uploads), or an array
            of raw stains (C, H, W), uint8 or uint16 (scaled as 16-bit files are).

    Returns:
        The preprocessed image, uint8 (C, S, S).

    Raises:
        DataError: a missing stain, an undecodable file, stains of different sizes, a
            wrong dtype or shape; one line naming the file, field or array.
    """
    from hpatk.core.data import decode_stains, load_stains, to_uint8

    stains = tuple(clf.stains)
    if isinstance(image, np.ndarray):
        raw = to_uint8(image)
        if raw is None:
            raise DataError(f"image array has dtype {image.dtype}; expected uint8 or uint16 "
                            f"raw stains")
        if raw.ndim != 3 or raw.shape[0] != len(stains) or min(raw.shape[1:]) < 1:
            raise DataError(f"image array has shape {tuple(image.shape)}; expected "
                            f"({len(stains)}, H, W): the stains {', '.join(stains)}")
    elif isinstance(image, Mapping):
        missing = [s for s in stains if s not in image]
        if missing:
            raise DataError(f"stain '{missing[0]}' is missing (this model takes "
                            f"{', '.join(stains)})")
        raw = decode_stains([image[s] for s in stains], stains, stains)
    else:
        raw = load_stains(image, stains=stains)
    return clf.preprocess(raw)


def _prefetched(samples: Sequence[Any], load: Any, batch: int,
                workers: int) -> Iterator[np.ndarray]:
    """uint8 batches (B, C, S, S), loaded by ``workers`` threads one batch ahead."""
    chunks = (samples[i:i + batch] for i in range(0, len(samples), batch))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque([pool.submit(load, s) for s in chunk] for chunk in islice(chunks, 2))
        while pending:
            futures = pending.popleft()
            nxt = next(chunks, None)
            if nxt is not None:  # bounded read-ahead: memory stays at ~2 batches
                pending.append([pool.submit(load, s) for s in nxt])
            try:
                yield np.stack([f.result() for f in futures])
            except BaseException:
                for fs in pending:
                    for f in fs:
                        f.cancel()
                raise


def predict_folder(clf: OnnxClassifier, samples: Sequence[Any], *, batch_size: int = 16,
                   tta: str = "none", workers: int = 2) -> FolderPrediction:
    """Run ``clf`` on every sample (decode, preprocess, infer, threshold)."""
    from hpatk.core.progress import progress

    load = functools.partial(load_image, clf)
    probs = np.empty((len(samples), len(clf.classes)), np.float32)
    n_batches = -(-len(samples) // batch_size)
    done = 0
    for images in progress(_prefetched(samples, load, batch_size, workers), desc="predict",
                           total=n_batches, unit="batch"):
        x = clf.to_float(images)
        probs[done:done + len(x)] = clf.probs_of(x, tta=tta)
        done += len(x)
    labels, _ = clf.labels_of(probs)
    return FolderPrediction([s.id for s in samples], probs, labels)


def evaluate_model(model: str | os.PathLike[str], images_dir: str | os.PathLike[str], *,
                   tta: str = "none", provider: str = "auto", threads: int | None = None,
                   batch_size: int = 16, workers: int = 2) -> Any:
    """``hpatk evaluate MODEL.onnx --data DIR``: an exported classifier (a fold ensemble
    too) on every labelled image of ``DIR`` (Kaggle layout, ``train.csv``) that carries one
    of its classes, through the same path as ``hpatk predict``.

    Returns:
        :class:`hpatk.core.evaluate.Evaluation` (tuned = the model's own thresholds).
    """
    from hpatk.core.evaluate import evaluation_of
    from hpatk.export.runtime import OnnxClassifier

    clf = OnnxClassifier(model, provider=provider, threads=threads)
    col = {c: j for j, c in enumerate(clf.classes)}
    samples = [s for s in select_samples(images_dir, split="train", stains=clf.stains)
               if any(c in col for c in s.labels)]
    if not samples:
        raise DataError(f"--data '{images_dir}': no labelled image carries one of the model's "
                        f"classes")
    targets = np.zeros((len(samples), len(col)), np.uint8)
    for i, s in enumerate(samples):
        targets[i, [col[c] for c in s.labels if c in col]] = 1
    res = predict_folder(clf, samples, batch_size=batch_size, tta=tta, workers=workers)
    ens = clf.metadata.get("ensemble")
    kind = f": ensemble of {ens['members']} models" if ens else ""
    what = (f"'{images_dir}' (ONNX {Path(model).name}{kind}, tta {tta}"
            f"{', flips in the graph' if clf.metadata.get('tta') == 'flips' else ''})")
    return evaluation_of(what, res.probs, targets, clf.classes, clf.metadata["thresholds"])


def write_outputs(clf: OnnxClassifier, result: FolderPrediction, out: str | os.PathLike[str],
                  probs_csv: str | os.PathLike[str] | None = None) -> None:
    """Write the submission (and the probabilities): both files or neither."""
    from hpatk.core.io import atomic_path
    from hpatk.core.submission import write_submission

    with contextlib.ExitStack() as stack:  # renames happen together, after both writes
        sub = stack.enter_context(atomic_path(out))
        write_submission(sub, result.ids, result.labels)
        if probs_csv is not None:
            tmp = stack.enter_context(atomic_path(probs_csv))
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["Id", *[str(c) for c in clf.classes]])
                for i, row in zip(result.ids, result.probs, strict=True):
                    w.writerow([i, *[f"{p:.6f}" for p in row]])


def check_paths(model: str | os.PathLike[str], out: str | os.PathLike[str],
                probs_csv: str | os.PathLike[str] | None) -> None:
    """Refuse outputs that would overwrite the model or each other."""
    named = {Path(model).resolve(): "MODEL"}
    for option, value in (("--out", out), ("--probs", probs_csv)):
        if value is None:
            continue
        p = Path(value).resolve()
        if p in named:
            raise HpatkError(f"{option} '{value}' is the same file as {named[p]}")
        if p.is_dir():
            raise HpatkError(f"{option} '{value}' is a folder")
        named[p] = option
