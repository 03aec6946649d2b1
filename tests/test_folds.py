"""Multilabel-stratified folds, folds.csv, and the Kaggle submission writer."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core.classes import TOP5
from hpatk.core.errors import DataError
from hpatk.core.folds import fold_shares, make_folds, read_folds, write_folds
from hpatk.core.submission import write_submission
from hpatk.core.synth import sample_labels


@pytest.fixture(scope="module")
def targets() -> np.ndarray:
    """2,000 label sets with Kaggle frequencies (the generator's)."""
    m = np.zeros((2000, 28), np.uint8)
    for i, lab in enumerate(sample_labels(2000, seed=5)):
        m[i, list(lab)] = 1
    return m


def test_folds_are_a_partition(targets):
    folds = make_folds(targets, k=5, seed=0)
    assert folds.shape == (2000,) and set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.sum() == 2000 and np.abs(sizes - 400).max() <= 20  # within 5%
    # Disjoint by construction: each sample has one fold; the validation sets of the
    # k splits cover the data exactly once.
    val = [set(np.flatnonzero(folds == f)) for f in range(5)]
    assert sum(map(len, val)) == 2000 and set().union(*val) == set(range(2000))


def test_each_class_share_is_close_in_every_fold(targets):
    folds = make_folds(targets, k=5, seed=0)
    shares, whole = fold_shares(targets, folds), targets.mean(axis=0)
    common = targets.sum(axis=0) >= 100
    assert np.abs(shares - whole)[:, common].max() < 0.02  # within 2 points
    present = targets.sum(axis=0) >= 5
    per_fold = np.stack([targets[folds == f].sum(axis=0) for f in range(5)])
    assert (per_fold[:, present] >= 1).all()  # even 5-image classes reach every fold


def test_better_than_a_plain_shuffled_kfold(targets):
    from sklearn.model_selection import KFold

    plain = np.zeros(len(targets), np.int64)
    for f, (_, val) in enumerate(KFold(5, shuffle=True, random_state=0).split(targets)):
        plain[val] = f
    strat = make_folds(targets, k=5, seed=0)
    rare = (targets.sum(axis=0) >= 5) & (targets.sum(axis=0) < 100)

    def spread(folds: np.ndarray) -> float:
        per_fold = np.stack([targets[folds == f].sum(axis=0) for f in range(5)])
        return float((per_fold.max(axis=0) - per_fold.min(axis=0))[rare].mean())

    assert spread(strat) < spread(plain)


def test_deterministic_for_a_seed(targets):
    a, b = make_folds(targets, 5, seed=1), make_folds(targets, 5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert (make_folds(targets, 5, seed=2) != a).any()


def test_one_column_and_unlabelled_rows():
    # One class (a GAN's class subset) and rows without any label in the chosen columns.
    y = np.zeros((40, 1), np.uint8)
    y[:12] = 1
    folds = make_folds(y, k=4, seed=0)
    assert np.bincount(folds).tolist() == [10] * 4
    assert [int(y[folds == f].sum()) for f in range(4)] == [3] * 4
    assert np.bincount(make_folds(np.zeros((12, 3)), k=3)).tolist() == [4, 4, 4]


def test_bad_k(targets):
    with pytest.raises(DataError, match="--k must be between 2 and the number of images"):
        make_folds(targets[:3], k=4)
    with pytest.raises(DataError, match=r"\(N, K\) matrix"):
        make_folds(targets[:, 0], k=2)


def test_folds_csv_round_trip(tmp_path):
    path = write_folds(tmp_path / "folds.csv", ["a", "b", "c"], np.array([1, 0, 1]))
    assert path.read_text() == "Id,fold\na,1\nb,0\nc,1\n"
    assert read_folds(path) == {"a": 1, "b": 0, "c": 1}
    assert list(read_folds(path)) == ["a", "b", "c"]


@pytest.mark.parametrize("text, message", [
    ("Id,split\na,1\n", "expected the columns Id,fold"),
    ("Id,fold\na,x\n", r"folds.csv:2: Id 'a': fold 'x' is not a non-negative integer"),
    ("Id,fold\na,-1\n", "fold '-1' is not a non-negative integer"),
    ("Id,fold\na,1\na,2\n", r"folds.csv:3: Id 'a': duplicate Id"),
    ("Id,fold\n", "has a header but no rows"),
])
def test_read_folds_errors(tmp_path, text, message):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_folds(path)
    with pytest.raises(DataError, match="file not found"):
        read_folds(tmp_path / "none.csv")


def test_cli_folds(synth_data, tmp_path):
    out = tmp_path / "folds.csv"
    res = CliRunner().invoke(cli, ["data", "folds", str(synth_data), "--k", "4", "--out",
                                   str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 96 images in 4 folds" in res.output
    folds = read_folds(out)
    with open(synth_data / "train.csv", newline="") as f:
        ids = [r["Id"] for r in csv.DictReader(f)]
    assert list(folds) == ids and set(folds.values()) == {0, 1, 2, 3}
    again = tmp_path / "again.csv"
    CliRunner().invoke(cli, ["data", "folds", str(synth_data), "--k", "4", "--out",
                             str(again), "--seed", "3"])
    assert again.read_bytes() == out.read_bytes()


def test_cli_folds_k_too_large_writes_nothing(synth_data, tmp_path):
    out = tmp_path / "folds.csv"
    res = CliRunner().invoke(cli, ["data", "folds", str(synth_data), "--k", "500",
                                   "--out", str(out)])
    assert res.exit_code == 1 and "Error: --k must be between 2" in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- submission
def test_write_submission(tmp_path):
    path = write_submission(tmp_path / "sub.csv", ["a", "b", "c"], [[25, 0], [], [27]])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["Id", "Predicted"], ["a", "0 25"], ["b", ""], ["c", "27"]]


def test_write_submission_from_a_matrix(tmp_path):
    probs = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], np.uint8)
    path = write_submission(tmp_path / "sub.csv", ["a", "b"], probs, classes=TOP5)
    assert path.read_text() == "Id,Predicted\na,0 21\nb,23\n"  # TOP5 = (0, 25, 21, 2, 23)
    full = np.zeros((1, 28), np.uint8)
    full[0, [3, 17]] = 1
    assert write_submission(tmp_path / "s2.csv", ["z"], full).read_text().endswith("z,3 17\n")


@pytest.mark.parametrize("ids, labels, message", [
    (["a"], [[28]], "label 28 is outside 0..27"),
    (["a", "b"], [[1]], "2 Ids but 1 label rows"),
    (["../x"], [[1]], "invalid Id"),
])
def test_write_submission_errors_leave_the_old_file(tmp_path, ids, labels, message):
    path = tmp_path / "sub.csv"
    path.write_text("old\n")
    with pytest.raises(DataError, match=message):
        write_submission(path, ids, labels)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["sub.csv"]
