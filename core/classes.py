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


def parse_classes(spec: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``all`` -> 0..27, ``top5`` -> the paper's five, ``"0,25,2"`` -> those indices (in
    order): the one parser of ``--classes``.

    Raises:
        HpatkError: anything else, repeated or out-of-range indices.
    """
    from hpatk.core.errors import HpatkError

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
        raise HpatkError(f"--classes must be 'all', 'top5' or class indices like '0,25,2', "
                         f"not '{spec}'") from None
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
