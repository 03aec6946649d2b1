"""The 28 HPA classes and their Kaggle HPA 2018 train counts (hpa_classes.tsv)."""

from __future__ import annotations

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


def class_subset(name: str) -> tuple[int, ...]:
    """Class indices for ``all`` or ``top5``."""
    if name == "all":
        return tuple(range(NUM_CLASSES))
    if name == "top5":
        return TOP5
    from hpatk.core.errors import HpatkError

    raise HpatkError(f"--classes must be 'all' or 'top5', not '{name}'")
