"""The synthetic HPA benchmark: layout, shapes, determinism, frequencies, biology,
learnability, atomic writes and the CLI."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core.classes import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_IMAGES, STAINS, TOP5
from hpatk.core.data import check_dataset, read_kaggle
from hpatk.core.errors import HpatkError
from hpatk.core.synth import make_synthetic, sample_labels, synthetic_id
from hpatk.core.synth_cells import render


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _matrix(labels: list[tuple[int, ...]]) -> np.ndarray:
    m = np.zeros((len(labels), 28), np.int64)
    for i, lab in enumerate(labels):
        m[i, list(lab)] = 1
    return m


# ---------------------------------------------------------------- layout and shapes
def test_layout_shapes_dtype(synth_data):
    names = {p.name for p in synth_data.iterdir()}
    assert {"train.csv", "train", "sample_submission.csv", "test", "test_labels.csv"} <= names
    train = _rows(synth_data / "train.csv")
    assert len(train) == 96 and list(train[0]) == ["Id", "Target"]
    test = _rows(synth_data / "sample_submission.csv")
    assert len(test) == 9 and list(test[0]) == ["Id", "Predicted"]
    assert [r["Id"] for r in _rows(synth_data / "test_labels.csv")] == [r["Id"] for r in test]
    assert len(list((synth_data / "train").iterdir())) == 4 * 96
    for split, rows in (("train", train[:5]), ("test", test[:2])):
        for row in rows:
            for stain in STAINS:
                img = cv2.imread(str(synth_data / split / f"{row['Id']}_{stain}.png"),
                                 cv2.IMREAD_UNCHANGED)
                assert img.shape == (64, 64) and img.dtype == np.uint8


def test_passes_validation(synth_data):
    refs = read_kaggle(synth_data)
    assert len(refs) == 96 and all(r.labels for r in refs)
    reports = check_dataset(synth_data)
    assert [r.split for r in reports] == ["train", "test"]
    assert all(not r.problems for r in reports)
    assert reports[0].shape == (64, 64) and reports[0].images == 96


def test_ids_are_kaggle_style_and_unique(synth_data):
    ids = [r["Id"] for r in _rows(synth_data / "train.csv")]
    assert len(set(ids)) == len(ids)
    assert ids[0] == synthetic_id(0, "train", 0)
    assert all(len(i) == 36 and i.count("-") == 4 for i in ids)


# ---------------------------------------------------------------- determinism
def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    a = make_synthetic(tmp_path / "a", n=6, size=32, seed=3, workers=1, n_test=2)
    b = make_synthetic(tmp_path / "b", n=6, size=32, seed=3, workers=2, n_test=2)
    c = make_synthetic(tmp_path / "c", n=6, size=32, seed=4, workers=1, n_test=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_same_scene_at_every_size():
    # Geometry is drawn before anything size-dependent: 128 px shrunk to 64 ~ 64 px.
    big = render([0, 21], 128, 11).astype(np.float32)
    small = render([0, 21], 64, 11).astype(np.float32)
    shrunk = np.stack([cv2.resize(p, (64, 64), interpolation=cv2.INTER_AREA) for p in big])
    for i in range(4):
        assert np.corrcoef(shrunk[i].ravel(), small[i].ravel())[0, 1] > 0.8


# ---------------------------------------------------------------- label frequencies
def test_label_frequencies_follow_kaggle():
    m = _matrix(sample_labels(20000, seed=0, min_count=0))
    p = np.array(KAGGLE_TRAIN_COUNTS) / KAGGLE_TRAIN_IMAGES
    se = np.sqrt(p * (1 - p) / len(m))
    assert np.all(np.abs(m.mean(axis=0) - p) < 4 * se + 1e-4)
    assert m.sum(axis=1).min() == 1  # every image has a label
    assert abs(m.sum(axis=1).mean() - p.sum()) < 0.02  # Kaggle: 1.63 labels per image


def test_frequency_ordering_and_minimum_count():
    m = _matrix(sample_labels(2000, seed=1))
    counts = m.sum(axis=0)
    assert counts.argmax() == 0  # Nucleoplasm
    assert np.argsort(-counts)[1] == 25  # then Cytosol
    assert counts[27] == counts.min() == 5  # Rods & rings rarest, raised to the minimum
    top = np.argsort(KAGGLE_TRAIN_COUNTS)[::-1][:8]
    assert set(np.argsort(-counts)[:8]) == set(top)
    m200 = _matrix(sample_labels(200, seed=2))
    assert m200.sum(axis=0).min() >= 4  # every class appears a few times from n = 200


def test_top5_only_uses_top5():
    labels = sample_labels(500, seed=0, classes="top5")
    used = {c for lab in labels for c in lab}
    assert used == set(TOP5) and all(lab for lab in labels)


# ---------------------------------------------------------------- biology and contrast
def _nucleus(img: np.ndarray) -> np.ndarray:
    """Otsu on the smoothed DAPI stain (smoothing fills the DAPI-dark nucleoli)."""
    blue = cv2.GaussianBlur(img[2], (0, 0), 2)
    return blue > cv2.threshold(blue, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]


def _green_in_nucleus(label: int, seed: int) -> float:
    img = render([label], 128, seed)
    g = img[0].astype(np.float32)
    hp = g - cv2.GaussianBlur(g, (0, 0), 2)
    noise = 1.4826 * np.median(np.abs(hp - np.median(hp)))  # robust pixel noise (MAD)
    signal = np.clip(g - np.percentile(g, 5) - 5 * noise, 0, None)
    return float(signal[_nucleus(img)].sum() / signal.sum())


@pytest.mark.parametrize("label", [0, 2, 3, 4, 5])
def test_nuclear_patterns_sit_in_the_nucleus(label):
    assert np.mean([_green_in_nucleus(label, s) for s in range(3)]) > 0.85


@pytest.mark.parametrize("label", [25, 23, 8, 7, 21, 13])
def test_cytoplasmic_patterns_avoid_the_nucleus(label):
    assert np.mean([_green_in_nucleus(label, s) for s in range(3)]) < 0.15


def test_low_contrast_that_clahe_improves():
    img = render([23], 128, 5)
    green = img[0]
    assert np.percentile(green, 99.5) < 130  # dim: most of the 8-bit range unused
    enhanced = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(green)
    assert enhanced.std() > 1.5 * green.std()


# ---------------------------------------------------------------- learnability
def _features(img: np.ndarray) -> list[float]:
    g = np.clip(img[0] - np.median(img[0]), 0, None).astype(np.float32)
    g /= g.max() + 1e-6
    tot = g.sum() + 1e-6
    feats = [float(g[_nucleus(img)].sum() / tot)]
    feats += [float(np.corrcoef(g.ravel(), img[i].ravel())[0, 1]) for i in (1, 2, 3)]
    lap = cv2.Laplacian(g, cv2.CV_32F)
    feats.append(float(np.abs(lap).mean() / (g.mean() + 1e-6)))
    feats += [float((g > t).mean()) for t in (0.2, 0.4, 0.6)]
    feats.append(float(np.abs(g - cv2.GaussianBlur(g, (0, 0), 2)).sum() / tot))
    return feats


def test_pattern_classes_are_learnable():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = [0, 2, 21, 23, 25, 14]  # nucleus, nucleoli, outline, tubules, fill, fibres
    x, y = [], []
    for c in classes:
        for i in range(16):
            x.append(_features(render([c], 64, np.random.SeedSequence([99, c, i]))))
            y.append(c)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, np.nan_to_num(np.array(x)), y, cv=4).mean()
    assert acc > 0.6  # chance is 1/6


# ---------------------------------------------------------------- atomic writes, errors
def test_refuses_a_non_empty_out_and_overwrites_on_request(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HpatkError, match="not empty.*--overwrite"):
        make_synthetic(out, n=4, size=16)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    make_synthetic(out, n=4, size=16, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "train.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp left behind


def test_no_test_split(tmp_path):
    out = make_synthetic(tmp_path / "d", n=5, size=16, n_test=0)
    assert sorted(p.name for p in out.iterdir()) == ["train", "train.csv"]
    assert [r.split for r in check_dataset(out)] == ["train"]


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import hpatk.core.synth_cells as cells

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(cells, "render", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        make_synthetic(tmp_path / "data", n=4, size=16, workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "--n must be at least 1"),
    ({"size": 4}, "--size must be between"),
    ({"classes": "top3"}, "--classes must be"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(HpatkError, match=message):
        make_synthetic(tmp_path / "data", **{"n": 4, "size": 16, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_with_preview(tmp_path):
    out, png = tmp_path / "d", tmp_path / "sheet.png"
    res = CliRunner().invoke(cli, ["data", "synth", str(out), "--n", "8", "--size", "32",
                                   "--seed", "2", "--preview", str(png)])
    assert res.exit_code == 0, res.output
    assert "8 train + 4 test images" in res.output and "images/s" in res.output
    sheet = cv2.imread(str(png))
    assert sheet.ndim == 3 and sheet.shape[0] > 100
    res = CliRunner().invoke(cli, ["data", "synth", str(out), "--n", "8"])
    assert res.exit_code == 1 and "Error:" in res.output and "not empty" in res.output
