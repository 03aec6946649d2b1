"""The 28 HPA classes and their Kaggle HPA 2018 train counts (hpa_classes.tsv)."""

from __future__ import annotations

from typing import Any

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center",
    "Nuclear speckles", "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus",
    "Peroxisomes", "Endosomes", "Lysosomes", "Intermediate filaments", "Actin filaments",
    "Focal adhesion sites", "Microtubules", "Microtubule ends", "Cytokinetic bridge",
    "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets",
    "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome", "Cytosol",
    "Cytoplasmic bodies", "Rods & rings",
)
KAGGLE_TRAIN_COUNTS: tuple[int, ...] = (
    12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537, 1066, 21,
    530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11,
)
KAGGLE_TRAIN_IMAGES = 31072
NUM_CLASSES = len(CLASS_NAMES)
# The paper's 5-class subset: the five most populous classes (~56% of the data).
TOP5: tuple[int, ...] = (0, 25, 21, 2, 23)
STAINS: tuple[str, ...] = ("green", "red", "blue", "yellow")


# --classes present: the classes with at least this many images
PRESENT_MIN = 10


def present_min(spec: Any) -> int | None:
    """N of a ``present`` / ``present:N`` class spec, or None for any other spec.

    Raises:
        HpatkError: ``present:`` followed by anything but an integer >= 1.
    """
    from hpatk.core.errors import HpatkError

    if not isinstance(spec, str) or not spec.startswith("present"):
        return None
    rest = spec[len("present"):]
    if not rest:
        return PRESENT_MIN
    try:
        n = int(rest[1:]) if rest[0] == ":" else -1
    except ValueError:
        n = -1
    if n < 1:
        raise HpatkError(f"--classes: '{spec}' must be 'present' or 'present:N' with N >= 1 "
                         f"(the classes with at least N images)")
    return n


def parse_classes(spec: str | list[int] | tuple[int, ...],
                  counts: Any = None) -> tuple[int, ...]:
    """``all`` -> 0..27, ``top5`` -> the paper's five, ``"0,25,2"`` -> those indices (in
    order), ``present`` / ``present:N`` -> the classes with at least N (default
    :data:`PRESENT_MIN`) images according to ``counts`` (per-class image counts, (28,)):
    the one parser of ``--classes``.

    Raises:
        HpatkError: anything else, repeated or out-of-range indices, ``present`` without
            ``counts`` or with no class reaching N.
    """
    from hpatk.core.errors import HpatkError

    n_min = present_min(spec)
    if n_min is not None:
        if counts is None:
            raise HpatkError(f"--classes {spec}: needs the data's label counts")
        counts = [int(c) for c in counts]
        idx = tuple(i for i, c in enumerate(counts) if c >= n_min)
        if not idx:
            raise HpatkError(f"--classes {spec}: no class has {n_min} or more images (the "
                             f"most is {max(counts, default=0)}); lower N with present:N")
        return idx
    if isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    elif spec == "all":
        return tuple(range(NUM_CLASSES))
    elif spec == "top5":
        return TOP5
    else:
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
    try:
        idx = tuple(int(s) for s in items)
    except ValueError:
        raise HpatkError(f"--classes must be 'all', 'top5', 'present[:N]' or class indices "
                         f"like '0,25,2', not '{spec}'") from None
    if not idx or len(set(idx)) != len(idx) or not all(0 <= i < NUM_CLASSES for i in idx):
        raise HpatkError(f"--classes: '{spec}' must list distinct indices in 0..{NUM_CLASSES - 1}")
    return idx


def parse_class(value: str | int, option: str = "--class") -> int:
    """One class from its index (``"0"``, ``0``) or name (``"Nucleoplasm"``, any case)."""
    import difflib

    from hpatk.core.errors import HpatkError

    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < NUM_CLASSES:
            raise HpatkError(f"{option} {index}: classes are 0..{NUM_CLASSES - 1}")
        return index
    names = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    if text.lower() in names:
        return names[text.lower()]
    close = difflib.get_close_matches(text, CLASS_NAMES, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise HpatkError(f"{option} '{text}' is not a class index (0..{NUM_CLASSES - 1}) or "
                     f"name{hint}")


def top_classes(labels: Any, n: int) -> list[int]:
    """The ``n`` classes with the most images (ties: lower index first), none empty.

    Shape: labels (N, 28) -> list of at most n class indices.
    """
    import numpy as np

    counts = np.asarray(labels).astype(np.int64).sum(axis=0)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    return [c for c in order if counts[c] > 0][:n]
