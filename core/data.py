"""Readers for the Kaggle HPA layout and HPAv18 external images, with strict validation.

Kaggle layout::

    DIR/train.csv                  Id,Target   (Target: space-separated class indices)
    DIR/train/{Id}_{stain}.png     512 x 512 uint8 gray, stain in green/red/blue/yellow
    DIR/sample_submission.csv      Id,Predicted
    DIR/test/{Id}_{stain}.png

HPAv18 external: the same CSV and file names, but each stain file may be an RGB JPEG or
PNG (often 2048 px): the stain is taken from its own channel (see :func:`load_stains`).

Validation policy. Every problem is one line naming the file, CSV line, Id and stain
(:class:`Problem`). By default the first problem raises :class:`DataError` (with the
count of the others) before anything is written. With ``skip_bad=True`` the readers drop
the bad samples and return them in ``refs.skipped``; ``hpatk data check --skip-bad``
writes that list to ``skipped.csv``. Checked before any image is opened: the CSV (present,
not empty, columns, one row per line), strict Ids (:data:`ID_PATTERN`) whose files stay
inside the data root, labels (integers 0..27, no repeats, at least one for train),
duplicate Ids and missing stain files. Checked when decoding: empty, truncated or
undecodable files, unsupported dtypes, RGB where gray is expected, stains of one sample
with different sizes, and (in ``check_dataset``) sizes that differ from the dataset's.
Conversions are explicit and documented, never silent clamping: 16-bit is scaled by
255/65535; an RGB Kaggle file is accepted only when its channels are identical.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hpatk.core.classes import NUM_CLASSES, STAINS
from hpatk.core.errors import DataError

# Letters, digits, '_' and '-' only: no '.', '/', '\\' or spaces, so an Id can never
# name a path outside its folder (Kaggle UUIDs and HPAv18 ids like 10580_1610_C1_1 fit).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
SPLITS = {"train": "train.csv", "test": "sample_submission.csv"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Channel of each stain in an HPAv18 RGB file (OpenCV order is B, G, R).
EXTERNAL_CHANNELS = {"green": (1,), "red": (2,), "blue": (0,), "yellow": (2, 1)}


@dataclass(frozen=True)
class SampleRef:
    """One image: its Id, labels and where its stain files are.

    Attributes:
        id: the image Id (validated against :data:`ID_PATTERN`).
        labels: sorted class indices (empty for a test image).
        root: the folder holding ``{id}_{stain}{suffix}``.
        source: ``"kaggle"`` (gray stain files) or ``"external"`` (HPAv18 RGB files).
        suffix: the file extension, ``.png`` for Kaggle.
    """

    id: str
    labels: tuple[int, ...]
    root: Path
    source: str = "kaggle"
    suffix: str = ".png"
    line: int | None = field(default=None, compare=False)  # its CSV line, for messages

    def paths(self, stains: Sequence[str] = STAINS) -> list[Path]:
        """The stain files, in ``stains`` order."""
        return [self.root / f"{self.id}_{s}{self.suffix}" for s in stains]


@dataclass(frozen=True)
class Problem:
    """One problem with the data, printed as one line: ``path:line: Id 'x' stain s: msg``."""

    path: Path
    message: str
    line: int | None = None
    id: str | None = None
    stain: str | None = None
    # for a problem with an image file: the CSV line listing its Id (skipped.csv's "line")
    listed_on: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        who = []
        if self.id is not None:
            who.append(f"Id {_show(self.id)}")
        if self.stain:
            who.append(f"stain {self.stain}")
        return f"{where}: {' '.join(who) + ': ' if who else ''}{self.message}"


class SampleError(DataError):
    """A :class:`DataError` about one sample; ``problem`` holds the details."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


class SampleList(list):
    """A list of :class:`SampleRef`; ``skipped`` holds the problems of dropped samples."""

    skipped: list[Problem]

    def __init__(self, refs: Iterable[SampleRef] = (), skipped: Iterable[Problem] = ()):
        super().__init__(refs)
        self.skipped = list(skipped)


def _show(text: str, limit: int = 60) -> str:
    """Quote user text for a message, cut short (a hostile Id may be huge)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_stains(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"green,red,blue"`` -> ``("green", "red", "blue")``; unknown or repeated names fail."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    bad = [s for s in names if s not in STAINS]
    if bad or not names:
        raise DataError(f"--stains: unknown stain {_show(bad[0]) if bad else '(none)'}; "
                        f"choose from {','.join(STAINS)}")
    if len(set(names)) != len(names):
        raise DataError(f"--stains: {text!r} names a stain twice")
    return tuple(names)


def parse_target(text: str) -> tuple[int, ...]:
    """``"0 25"`` -> ``(0, 25)``. Raises ValueError with the reason."""
    tokens = text.split()
    for t in tokens:
        digits = t[1:] if t[:1] in "+-" else t
        if not digits.isdigit() or not digits.isascii():
            raise ValueError(f"label {_show(t)} is not an integer")
        if not 0 <= int(t) < NUM_CLASSES:
            raise ValueError(f"label {t} is outside 0..{NUM_CLASSES - 1}")
    labels = [int(t) for t in tokens]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a label is repeated in {_show(text)}")
    return tuple(sorted(labels))


def multihot(labels: Iterable[int], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class indices -> a 0/1 vector. Shape: (num_classes,) uint8."""
    out = np.zeros(num_classes, np.uint8)
    for c in labels:
        if not 0 <= int(c) < num_classes:
            raise DataError(f"label {c} is outside 0..{num_classes - 1}")
        out[int(c)] = 1
    return out


def label_matrix(refs: Sequence[SampleRef], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Multi-hot labels of ``refs``. Shape: (N, num_classes) uint8."""
    out = np.zeros((len(refs), num_classes), np.uint8)
    for i, r in enumerate(refs):
        out[i, list(r.labels)] = 1
    return out


def safe_path(root: Path, name: str) -> Path:
    """``root / name`` after checking that it stays inside ``root`` (no file is opened).

    The check is lexical (``..`` and absolute names), so a data folder that is itself a
    symlink to another disk still works.
    """
    root_abs = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root_abs, name))
    if os.path.commonpath([root_abs, path]) != root_abs:
        raise DataError(f"{root}: {_show(name)} resolves outside the data folder")
    return Path(path)


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Rows of a CSV as (line number, {column: text}); structural problems are fatal."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected a header {','.join(required)})")
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: no {_show(missing[0])} column "
                        f"(header: {','.join(header)}; expected {','.join(required)})")
    rows, problems = [], []
    for line, values in enumerate(reader, start=2):
        if not values or not "".join(values).strip():
            continue  # blank lines are harmless
        if len(values) != len(header):
            problems.append(Problem(path, f"{len(values)} fields, the header has {len(header)}",
                                    line, values[0].strip() if values else None))
            continue
        rows.append((line, {h: v.strip() for h, v in zip(header, values, strict=True)}))
    if not rows and not problems:
        raise DataError(f"{path}: has a header but no rows")
    return rows, problems


def _scan(data_dir: str | os.PathLike[str], csv_name: str, image_dir: str, *,
          labelled: bool, stains: Sequence[str], source: str,
          suffixes: Sequence[str]) -> tuple[list[SampleRef], list[Problem]]:
    """Validate a CSV and its stain files without opening any image."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    csv_path = root / csv_name
    columns = ("Id", "Target") if labelled else ("Id",)
    rows, problems = _read_csv(csv_path, columns)
    folder = safe_path(root, image_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found (needed by {csv_path})")
    present = set(os.listdir(folder))  # one listing instead of 4 stat() calls per image
    seen: dict[str, int] = {}
    refs = []
    for line, row in rows:
        image_id = row["Id"]
        if not ID_PATTERN.fullmatch(image_id):
            problems.append(Problem(csv_path, "invalid Id (letters, digits, '_' and '-' only, "
                                    "at most 128)", line, image_id))
            continue
        safe_path(folder, image_id)  # the pattern already guarantees it; belt and braces
        if image_id in seen:
            problems.append(Problem(csv_path, f"duplicate Id (first on line {seen[image_id]})",
                                    line, image_id))
            continue
        seen[image_id] = line
        labels: tuple[int, ...] = ()
        if labelled:
            try:
                labels = parse_target(row["Target"])
            except ValueError as exc:
                problems.append(Problem(csv_path, str(exc), line, image_id))
                continue
            if not labels:
                problems.append(Problem(csv_path, "empty Target (no labels)", line, image_id))
                continue
        suffix = next((s for s in suffixes if f"{image_id}_{stains[0]}{s}" in present),
                      suffixes[0])
        missing = [s for s in stains if f"{image_id}_{s}{suffix}" not in present]
        for s in missing:
            problems.append(Problem(folder / f"{image_id}_{s}{suffix}", "stain file not found "
                                    f"(listed on {csv_path.name} line {line})", None, image_id, s,
                                    listed_on=line))
        if not missing:
            refs.append(SampleRef(image_id, labels, folder, source, suffix, line))
    return refs, problems


def _finish(refs: list[SampleRef], problems: list[Problem], skip_bad: bool, where: Path,
            data_dir: str | os.PathLike[str]) -> SampleList:
    if problems and not skip_bad:
        more = (f" (and {len(problems) - 1} more: `hpatk data check {data_dir}` lists them)"
                if len(problems) > 1 else "")
        raise DataError(f"{problems[0]}{more}")
    bad = {p.id for p in problems}
    keep = [r for r in refs if r.id not in bad]
    if not keep:
        first = f" ({len(problems)} problems, first: {problems[0]})" if problems else ""
        raise DataError(f"{where}: no usable samples{first}")
    return SampleList(keep, problems)


def read_kaggle(data_dir: str | os.PathLike[str], split: str = "train", *,
                skip_bad: bool = False, stains: Sequence[str] = STAINS) -> SampleList:
    """Read a Kaggle-layout split: ``train`` (train.csv + train/) or ``test``
    (sample_submission.csv + test/, labels empty).

    Validates the CSV, Ids, labels, duplicates and that every stain file exists; images
    are not decoded (``load_stains`` and ``check_dataset`` do that).

    Args:
        data_dir: the dataset folder.
        split: ``"train"`` or ``"test"``.
        skip_bad: drop bad samples (listed in the result's ``skipped``) instead of failing.
        stains: the stains that must exist.

    Returns:
        a list of :class:`SampleRef` in CSV order, with a ``skipped`` attribute.

    Raises:
        DataError: one line naming the first problem (and how many others there are).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {_show(split)}; choose from {', '.join(SPLITS)}")
    stains = parse_stains(stains)
    refs, problems = _scan(data_dir, SPLITS[split], split, labelled=split == "train",
                           stains=stains, source="kaggle", suffixes=(".png",))
    return _finish(refs, problems, skip_bad, Path(data_dir) / SPLITS[split], data_dir)


def read_external(data_dir: str | os.PathLike[str], csv_name: str | None = None,
                  image_dir: str | None = None, *, skip_bad: bool = False,
                  stains: Sequence[str] = STAINS) -> SampleList:
    """Read HPAv18 external images: a CSV with Id,Target and ``{Id}_{stain}.{png,jpg,...}``.

    Args:
        data_dir: the dataset folder.
        csv_name: the CSV inside it (default: the only ``*.csv`` there).
        image_dir: the image folder inside it (default: ``train/`` if present, else
            ``data_dir`` itself).
        skip_bad: as in :func:`read_kaggle`.
        stains: the stains that must exist.

    Returns:
        :class:`SampleRef` list with ``source="external"``: :func:`load_stains` takes each
        stain from its own channel of an RGB file.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if csv_name is None:
        found = sorted(p.name for p in root.glob("*.csv"))
        if len(found) != 1:
            raise DataError(f"{root}: expected one .csv file, found "
                            f"{', '.join(found) if found else 'none'} (pass csv_name)")
        csv_name = found[0]
    if image_dir is None:
        image_dir = "train" if (root / "train").is_dir() else "."
    refs, problems = _scan(root, csv_name, image_dir, labelled=True, stains=parse_stains(stains),
                           source="external", suffixes=IMAGE_SUFFIXES)
    return _finish(refs, problems, skip_bad, root / csv_name, data_dir)


def _tail_ok(buf: np.ndarray) -> bool:
    """Whether a PNG ends with its IEND chunk / a JPEG with its EOI marker (cv2 decodes
    a truncated JPEG without complaint, filling the missing rows with gray)."""
    head = bytes(buf[:4])
    if head.startswith(b"\x89PNG"):
        return bytes(buf[-8:-4]) == b"IEND"
    if head.startswith(b"\xff\xd8"):
        tail = bytes(buf[-64:]).rstrip(b"\x00")  # some writers pad after EOI
        return tail.endswith(b"\xff\xd9")
    return True


def read_stain(path: Path, stain: str, source: str = "kaggle", image_id: str | None = None
               ) -> np.ndarray:
    """Decode one stain file to 8-bit gray (see :func:`decode_stain`).

    Returns:
        uint8 array. Shape: (H, W).

    Raises:
        DataError: naming the file, Id and stain.
    """
    return decode_stain(_read_bytes(path, stain, image_id), stain, source, where=path,
                        image_id=image_id)


def _read_bytes(path: Path, stain: str, image_id: str | None) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise SampleError(Problem(path, "file not found", None, image_id, stain)) from None
    except OSError as exc:
        raise SampleError(Problem(path, f"cannot read ({exc.strerror})", None, image_id,
                                  stain)) from None


def to_uint8(img: np.ndarray) -> np.ndarray | None:
    """8-bit pixels: uint8 as is, uint16 scaled linearly (``round(x * 255 / 65535)``, the
    same factor for every image so intensities stay comparable); None for other types."""
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return img if img.dtype == np.uint8 else None


def decode_stain(buf: np.ndarray | bytes, stain: str, source: str = "kaggle", *,
                 where: Path | str = "<bytes>", image_id: str | None = None) -> np.ndarray:
    """Decode one encoded stain image (PNG, JPEG, TIFF bytes) to 8-bit gray with explicit
    conversions.

    16-bit is scaled by :func:`to_uint8`. Kaggle files must be gray (an RGB file whose
    channels are identical is accepted); external files take the stain's channel: green
    from G, red from R, blue from B, yellow as the mean of R and G (HPA renders yellow as
    R + G).

    Args:
        where: the file (or upload field) named in errors.

    Returns:
        uint8 array. Shape: (H, W).

    Raises:
        DataError: naming ``where``, Id and stain.
    """
    import cv2

    def fail(msg: str) -> SampleError:
        return SampleError(Problem(Path(where), msg, None, image_id, stain))

    buf = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray,
                                                                 memoryview)) else buf
    if buf.size == 0:
        raise fail("empty file")
    if not _tail_ok(buf):
        raise fail("truncated image (the file ends early)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise fail("cannot decode the image (corrupt or not PNG/JPEG/TIFF)")
    dtype = img.dtype
    img = to_uint8(img)
    if img is None:
        raise fail(f"unsupported pixel type {dtype} (expected 8- or 16-bit)")
    if img.ndim == 3:
        if img.shape[2] == 2:  # gray + alpha
            img = img[:, :, :1]
        color = img[:, :, :3]
        if source == "external":
            ch = EXTERNAL_CHANNELS[stain]
            img = color[:, :, ch[0]] if len(ch) == 1 else (
                (color[:, :, ch[0]].astype(np.uint16) + color[:, :, ch[1]] + 1) // 2
            ).astype(np.uint8)
        elif color.shape[2] == 1 or (np.array_equal(color[:, :, 0], color[:, :, 1])
                                     and np.array_equal(color[:, :, 0], color[:, :, 2])):
            img = color[:, :, 0]
        else:
            raise fail("RGB image where a grayscale stain is expected (channels differ; "
                       "HPAv18 RGB files are read with read_external / --layout external)")
    return np.ascontiguousarray(img)


def load_stains(ref: SampleRef, stains: Sequence[str] = STAINS, *,
                size: int | None = None, expected_shape: tuple[int, int] | None = None
                ) -> np.ndarray:
    """Decode the stains of one sample.

    Args:
        ref: the sample.
        stains: which stains, in this order.
        size: resize every stain to ``size`` x ``size`` (cv2.INTER_AREA), explicitly;
            ``None`` keeps the original size (the default, as preprocessing resizes).
        expected_shape: (H, W) every stain must have before resizing.

    Returns:
        uint8 array. Shape: (len(stains), H, W).

    Raises:
        DataError: one line naming the file, Id and stain.
    """
    if not ID_PATTERN.fullmatch(ref.id):
        raise DataError(f"{ref.root}: Id {_show(ref.id)}: invalid Id")
    paths = [safe_path(ref.root, p.name) for p in ref.paths(stains)]  # before opening
    return decode_stains([_read_bytes(p, s, ref.id) for s, p in zip(stains, paths, strict=True)],
                         stains, paths, source=ref.source, image_id=ref.id, size=size,
                         expected_shape=expected_shape)


def decode_stains(buffers: Sequence[np.ndarray | bytes], stains: Sequence[str],
                  where: Sequence[Path | str], *, source: str = "kaggle",
                  image_id: str | None = None, size: int | None = None,
                  expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one sample's encoded stain images (the bytes of its files or uploads).

    Args:
        buffers: one encoded image per stain, in ``stains`` order.
        where: the file (or upload field) of each, named in errors.
        size: as in :func:`load_stains`.
        expected_shape: as in :func:`load_stains`.

    Returns:
        uint8 array. Shape: (len(stains), H, W).

    Raises:
        DataError: one line naming the file (or field), Id and stain.
    """
    import cv2

    planes = []
    for buf, stain, name in zip(buffers, stains, where, strict=True):
        img = decode_stain(buf, stain, source, where=name, image_id=image_id)
        want = expected_shape or (planes[0].shape if planes else None)
        if want is not None and img.shape != tuple(want):
            first = "expected" if expected_shape else f"the {stains[0]} stain has"
            raise SampleError(Problem(Path(name), f"size {img.shape[1]}x{img.shape[0]}, "
                                      f"{first} {want[1]}x{want[0]}", None, image_id, stain))
        planes.append(img)
    if size is not None and planes[0].shape != (size, size):
        planes = [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in planes]
    return np.stack(planes)


@dataclass
class SplitReport:
    """What ``check_dataset`` found in one split."""

    split: str
    rows: int
    images: int
    class_counts: np.ndarray  # (28,) images per class among the usable images
    labels_per_image: float
    shape: tuple[int, int] | None
    problems: list[Problem] = field(default_factory=list)


def check_dataset(data_dir: str | os.PathLike[str], *, stains: Sequence[str] = STAINS,
                  layout: str = "kaggle", expected_size: int | None = None,
                  workers: int | None = None, decode: bool = True) -> list[SplitReport]:
    """Run every check on a dataset folder, decoding every image.

    Args:
        data_dir: the dataset folder.
        stains: stains to check.
        layout: ``"kaggle"`` (train, and test if sample_submission.csv exists) or
            ``"external"`` (HPAv18; sizes may vary, so no size check across images).
        expected_size: the side every image must have; default: the most common size.
        workers: decoding threads (cv2 releases the GIL); default ``os.cpu_count()``.
        decode: decode images (False: CSV and file checks only).

    Returns:
        one :class:`SplitReport` per split; never raises for bad samples (CSV-level
        structural errors such as a missing column still raise DataError).
    """
    from concurrent.futures import ThreadPoolExecutor

    from hpatk.core.progress import progress

    stains = parse_stains(stains)
    root = Path(data_dir)
    jobs: list[tuple[str, list[SampleRef], list[Problem]]] = []
    if layout == "kaggle":
        for split, name in SPLITS.items():
            if split == "train" or (root / name).exists():
                refs, problems = _scan(root, name, split, labelled=split == "train",
                                       stains=stains, source="kaggle", suffixes=(".png",))
                jobs.append((split, refs, problems))
    elif layout == "external":
        refs = read_external(root, skip_bad=True, stains=stains)
        jobs.append(("external", list(refs), refs.skipped))
    else:
        raise DataError(f"--layout must be 'kaggle' or 'external', not {_show(layout)}")
    reports = []
    for split, refs, problems in jobs:
        rows = len(refs) + len({p.id for p in problems})
        shapes: dict[str, tuple[int, int]] = {}
        if decode and refs:
            def one(ref: SampleRef) -> tuple[str, tuple[int, int] | Problem]:
                try:
                    return ref.id, load_stains(ref, stains).shape[1:]
                except SampleError as exc:  # the CSV line listing the image, for skipped.csv
                    return ref.id, dataclasses.replace(exc.problem, listed_on=ref.line)

            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                for image_id, res in progress(pool.map(one, refs), desc=f"check {split}",
                                              total=len(refs), unit="img"):
                    if isinstance(res, Problem):
                        problems.append(res)
                    else:
                        shapes[image_id] = res
        shape = None
        if shapes and layout == "kaggle":
            shape = ((expected_size, expected_size) if expected_size
                     else Counter(shapes.values()).most_common(1)[0][0])
            for ref in refs:
                got = shapes.get(ref.id)
                if got is not None and got != shape:
                    problems.append(Problem(ref.paths(stains[:1])[0], f"size {got[1]}x{got[0]}, "
                                            f"expected {shape[1]}x{shape[0]}", None, ref.id,
                                            stains[0]))
        bad = {p.id for p in problems}
        good = [r for r in refs if r.id not in bad]
        counts = label_matrix(good).sum(axis=0) if good else np.zeros(NUM_CLASSES, np.int64)
        lpi = float(counts.sum() / len(good)) if good and split != "test" else 0.0
        reports.append(SplitReport(split, rows, len(good), counts, lpi, shape, problems))
    return reports


def write_skipped(path: str | os.PathLike[str], problems: Sequence[Problem]) -> Path:
    """Write skipped samples as CSV (path,line,Id,stain,problem), atomically; ``line`` is
    the CSV line of the problem, or for an image file the CSV line listing its Id."""
    from hpatk.core.io import atomic_open

    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "line", "Id", "stain", "problem"])
        for p in problems:
            w.writerow([str(p.path), p.line or p.listed_on or "", p.id or "", p.stain or "",
                        p.message])
    return path
