"""core/metrics.py against scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hpatk.core.metrics import (
    accuracy,
    apply_thresholds,
    macro_f1,
    macro_precision_recall,
    micro_f1,
    paper_macro_f1,
    per_class_f1,
    subset_accuracy,
    summary,
    tune_thresholds,
)
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score


def _random_case(rng: np.random.Generator, n: int, k: int, rate: float = 0.3):
    y_true = (rng.random((n, k)) < rate).astype(np.uint8)
    y_pred = (rng.random((n, k)) < rate).astype(np.uint8)
    return y_true, y_pred


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("zero_division", [0, 1])
def test_f1_equals_sklearn(seed, zero_division):
    rng = np.random.default_rng(seed)
    # k >= 2: scikit-learn reads an (N, 1) indicator as a binary problem
    n, k = int(rng.integers(1, 80)), int(rng.integers(2, 30))
    y_true, y_pred = _random_case(rng, n, k, rate=float(rng.uniform(0.02, 0.5)))
    np.testing.assert_allclose(per_class_f1(y_true, y_pred, zero_division),
                               f1_score(y_true, y_pred, average=None,
                                        zero_division=zero_division))
    assert macro_f1(y_true, y_pred, zero_division) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=zero_division))
    assert micro_f1(y_true, y_pred, zero_division) == pytest.approx(
        f1_score(y_true, y_pred, average="micro", zero_division=zero_division))


@pytest.mark.parametrize("seed", range(4))
def test_accuracies_equal_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    y_true, y_pred = _random_case(rng, 50, 28)
    # element-wise accuracy (Keras binary_accuracy) = accuracy over the flattened decisions
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true.ravel(),
                                                                    y_pred.ravel()))
    assert subset_accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    s = summary(y_true, y_pred)
    assert s["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro",
                                                   zero_division=0))


def test_class_without_positives_or_predictions_follows_zero_division():
    y_true = np.array([[1, 0, 0], [0, 1, 0]])
    y_pred = np.array([[1, 0, 0], [0, 1, 0]])  # class 2: no positives, no predictions
    assert per_class_f1(y_true, y_pred).tolist() == [1.0, 1.0, 0.0]
    assert per_class_f1(y_true, y_pred, zero_division=1).tolist() == [1.0, 1.0, 1.0]
    assert macro_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0)) == pytest.approx(2 / 3)


def test_paper_eq8_macro_f1_by_hand():
    """Class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2. Class 1: TP 1, FN 1 -> P 1, R 1/2,
    F1 2/3. Kaggle: (1/2 + 2/3) / 2 = 7/12. Eq. 8: P = 3/4, R = 1/2 -> 2 (3/8) / (5/4) = 3/5."""
    y_true = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    y_pred = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    assert macro_precision_recall(y_true, y_pred) == pytest.approx((0.75, 0.5))
    assert paper_macro_f1(y_true, y_pred) == pytest.approx(0.6)
    assert macro_f1(y_true, y_pred) == pytest.approx(7 / 12)
    s = summary(y_true, y_pred)
    assert s["paper_macro_f1"] == pytest.approx(0.6) and s["macro_f1"] == pytest.approx(7 / 12)
    assert paper_macro_f1(y_true, np.zeros_like(y_pred)) == 0.0  # P = R = 0


@pytest.mark.parametrize("seed", range(6))
def test_paper_macro_f1_from_sklearn_precision_recall(seed):
    rng = np.random.default_rng(200 + seed)
    y_true, y_pred = _random_case(rng, int(rng.integers(2, 60)), int(rng.integers(2, 12)),
                                  rate=float(rng.uniform(0.05, 0.5)))
    p = precision_score(y_true, y_pred, average="macro", zero_division=0)
    r = recall_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_precision_recall(y_true, y_pred) == pytest.approx((p, r))
    assert paper_macro_f1(y_true, y_pred) == pytest.approx(2 * p * r / (p + r) if p + r else 0)
    # the harmonic mean is concave: Eq. 8 is never below the mean of per-class F1
    assert paper_macro_f1(y_true, y_pred) >= macro_f1(y_true, y_pred) - 1e-12


def test_inputs_may_be_bool_or_float():
    rng = np.random.default_rng(3)
    y_true, y_pred = _random_case(rng, 30, 5)
    assert macro_f1(y_true.astype(bool), y_pred.astype(np.float32)) == pytest.approx(
        macro_f1(y_true, y_pred))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        macro_f1(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        accuracy(np.zeros(3), np.zeros(3))


def _best_f1_brute_force(y: np.ndarray, s: np.ndarray) -> float:
    return max(f1_score(y, s >= c, zero_division=0) for c in np.unique(s))


@pytest.mark.parametrize("seed", range(6))
def test_tuned_thresholds_are_f1_optimal(seed):
    rng = np.random.default_rng(200 + seed)
    n, k = int(rng.integers(5, 60)), int(rng.integers(1, 6))
    y = (rng.random((n, k)) < 0.3).astype(np.uint8)
    probs = np.round(rng.random((n, k)), 2)  # rounding makes ties
    th = tune_thresholds(y, probs)
    assert th.shape == (k,)
    for j in range(k):
        if y[:, j].sum() == 0:
            assert th[j] == 0.5  # no positives: the default threshold stays
            continue
        best = _best_f1_brute_force(y[:, j], probs[:, j])
        p = y[:, j].mean()
        if best <= 2 * p / (1 + p) + 1e-9:  # no cut beats "all positive": uninformative
            assert th[j] == 0.5
            continue
        got = f1_score(y[:, j], probs[:, j] >= th[j], zero_division=0)
        assert got == pytest.approx(best)


def test_grid_thresholds_are_the_best_grid_values():
    rng = np.random.default_rng(7)
    y = (rng.random((80, 4)) < 0.4).astype(np.uint8)
    probs = np.clip(y * 0.3 + rng.random((80, 4)) * 0.7, 0, 1)
    grid = np.linspace(0.05, 0.95, 19)
    th = tune_thresholds(y, probs, grid=grid)
    for j in range(4):
        assert np.isclose(grid, th[j]).any()
        best = max(f1_score(y[:, j], probs[:, j] >= g, zero_division=0) for g in grid)
        assert f1_score(y[:, j], probs[:, j] >= th[j], zero_division=0) == pytest.approx(best)


def test_tuning_improves_f1_on_a_constructed_case():
    # A model whose scores rank perfectly but are badly calibrated (all below 0.5 for
    # two classes): fixed 0.5 thresholds miss them, tuned thresholds recover them.
    rng = np.random.default_rng(11)
    y = (rng.random((200, 3)) < 0.3).astype(np.uint8)
    y[0] = 1
    probs = np.where(y == 1, 0.2 + 0.1 * rng.random(y.shape), 0.1 * rng.random(y.shape))
    probs[:, 2] = np.where(y[:, 2] == 1, 0.9, 0.05)  # a well calibrated class
    before = macro_f1(y, apply_thresholds(probs, 0.5, at_least_one=False))
    th = tune_thresholds(y, probs)
    after = macro_f1(y, apply_thresholds(probs, th, at_least_one=False))
    assert before == pytest.approx(1 / 3)
    assert after == pytest.approx(1.0)
    assert np.all((th[:2] > 0.1) & (th[:2] < 0.2))


def test_apply_thresholds_at_least_one_label():
    probs = np.array([[0.9, 0.1, 0.2],     # passes class 0
                      [0.1, 0.3, 0.35],    # none passes: ratio 0.2, 0.6, 0.35 -> class 1
                      [0.05, 0.02, 0.01]])  # none passes: ratio 0.1, 0.04, 0.01 -> class 0
    th = np.array([0.5, 0.5, 1.0])
    pred = apply_thresholds(probs, th)
    assert pred.dtype == np.uint8
    assert pred.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert apply_thresholds(probs, th, at_least_one=False).tolist() == [
        [1, 0, 0], [0, 0, 0], [0, 0, 0]]
    rng = np.random.default_rng(5)
    many = apply_thresholds(rng.random((500, 28)) * 0.5, np.full(28, 0.45))
    assert many.sum(axis=1).min() >= 1


def test_apply_thresholds_matches_plain_comparison_when_labels_exist():
    rng = np.random.default_rng(9)
    probs = rng.random((100, 6))
    th = rng.uniform(0.2, 0.8, 6)
    pred = apply_thresholds(probs, th)
    plain = probs >= th
    has = plain.any(axis=1)
    assert np.array_equal(pred[has], plain[has].astype(np.uint8))


# -- macro F1 over the classes present ---------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_over_present_classes_equals_sklearn_labels(seed):
    """28 model classes, a handful present: hpatk's macro F1 is scikit-learn's with
    ``labels=`` the classes that have a positive; the all-classes mean is diluted."""
    from hpatk.core.metrics import predicted_metrics, present_classes

    rng = np.random.default_rng(300 + seed)
    n, k = int(rng.integers(10, 80)), 28
    present = np.sort(rng.choice(k, size=int(rng.integers(1, 8)), replace=False))
    y_true = np.zeros((n, k), np.uint8)
    y_true[:, present] = rng.random((n, len(present))) < 0.4
    y_true[0, present] = 1  # every chosen class has a positive
    y_pred = (rng.random((n, k)) < 0.2).astype(np.uint8)  # predictions on absent ones too
    assert present_classes(y_true).tolist() == present.tolist()
    m = predicted_metrics(y_true, y_pred)
    assert m["classes_present"] == len(present) and m["classes"] == k
    assert m["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0))
    assert m["macro_f1_all"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_f1_all"] == pytest.approx(m["macro_f1"] * len(present) / k)
    assert m["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro",
                                                   zero_division=0))


def test_single_class_is_multilabel_not_binary():
    """An (N, 1) indicator stays one class (scikit-learn alone would score it binary)."""
    y_true = np.array([[1], [0], [1], [1]])
    y_pred = np.array([[1], [1], [0], [1]])
    assert per_class_f1(y_true, y_pred).tolist() == pytest.approx([2 * 2 / (2 * 2 + 1 + 1)])
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true[:, 0], y_pred[:, 0]))


def test_describe_macro_f1_names_the_classes_present():
    from hpatk.core.metrics import classification_metrics, describe_macro_f1

    y = np.zeros((4, 28), np.uint8)
    y[:, :5] = np.eye(4, 5, dtype=np.uint8) + np.eye(4, 5, k=1, dtype=np.uint8)
    probs = y * 0.9 + 0.05
    m = classification_metrics(y, probs)
    assert m["macro_f1"] == pytest.approx(1.0) and m["macro_f1_all"] == pytest.approx(5 / 28)
    assert describe_macro_f1(m) == ("macro F1 1.0000 over 5 of 28 classes present "
                                    "(0.1786 over all 28)")
    full = classification_metrics(y[:, :5], probs[:, :5])
    assert describe_macro_f1(full, 3) == "macro F1 1.000 over 5 of 5 classes present"
