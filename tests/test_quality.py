"""Issue 16: macro F1 over the classes present, ``--classes present`` and the warning for
classes with too few images, out-of-fold predictions and thresholds of an all-folds run,
and the fold ensemble exported as one ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hpatk.core.classes import PRESENT_MIN, parse_classes
from hpatk.core.errors import HpatkError
from hpatk.core.train_config import TrainConfig

TINY = "timm:test_resnet"


def test_present_class_spec():
    counts = np.zeros(28, int)
    counts[[0, 2, 25]] = [40, 10, 12]
    counts[[5, 7]] = [9, 1]
    assert PRESENT_MIN == 10
    assert parse_classes("present", counts) == (0, 2, 25)
    assert parse_classes("present:5", counts) == (0, 2, 5, 25)
    assert parse_classes("present:1", counts) == (0, 2, 5, 7, 25)
    assert parse_classes("all", counts) == tuple(range(28))
    TrainConfig(classes="present:3").validate()  # resolved later, against the data
    for bad in ("present:0", "present:x", "presentx", "present:"):
        with pytest.raises(HpatkError, match="present:N"):
            TrainConfig(classes=bad).validate()
    with pytest.raises(HpatkError, match="no class has 50 or more images"):
        parse_classes("present:50", counts)
    with pytest.raises(HpatkError, match="needs the data"):
        parse_classes("present")


@pytest.fixture(scope="module")
def top5_cache(tmp_path_factory) -> Path:
    """48 synthetic images at 32 px carrying only the paper's five classes."""
    from hpatk.core.cache import build_cache
    from hpatk.core.synth import make_synthetic

    root = tmp_path_factory.mktemp("q5")
    folder = make_synthetic(root / "data", n=48, size=32, seed=2, classes="top5", workers=1)
    return build_cache(folder, root / "cache.h5", enhance="clahe", size=32, workers=1)


def test_sparse_classes_warn_once_and_present_selects(top5_cache, capsys):
    from hpatk.core.cache import cache_labels
    from hpatk.core.classes import CLASS_NAMES, TOP5
    from hpatk.core.train_data import plan_data

    counts = np.asarray(cache_labels(top5_cache)).sum(axis=0)
    cfg = TrainConfig(data=str(top5_cache), folds=2, classes="all")
    plan_data(cfg)
    err = capsys.readouterr().err
    absent = [c for c in range(28) if counts[c] < PRESENT_MIN]
    assert len(absent) >= 23 and err.count("warning:") == 1
    assert f"{len(absent)} of 28 classes have fewer than {PRESENT_MIN} images" in err
    assert f"{CLASS_NAMES[absent[0]]} ({counts[absent[0]]})" in err
    assert "--classes present" in err
    plan_data(cfg)  # the same data and classes: said once
    assert "warning" not in capsys.readouterr().err
    plan = plan_data(cfg.replace(classes="present"))
    assert "warning" not in capsys.readouterr().err
    assert plan.classes == tuple(c for c in range(28) if counts[c] >= PRESENT_MIN)
    assert set(plan.classes) <= set(TOP5)
