"""Multi-label metrics: macro / micro F1 (scikit-learn), element-wise and subset
accuracy, per-class F1, the macro F1 *over the classes present*, and per-class decision
thresholds tuned for F1 on validation probabilities.

Two macro F1s exist and both are reported, each by its own name: :func:`macro_f1` is the
mean of the per-class F1 scores (the Kaggle HPA metric, scikit-learn's
``f1_score(average="macro")``); :func:`paper_macro_f1` is the F1 of the macro-averaged
precision and recall (Eq. 8 of Verma et al. 2020). Eq. 8 is never below the Kaggle value
of the same predictions (the harmonic mean is concave: Jensen; Opitz & Burst 2019, "Macro
F1 and Macro F1"), so the two are not interchangeable when comparing with published numbers.

Inputs are (N, K) arrays: ``y_true`` and ``y_pred`` of 0/1 (any integer, bool or float
dtype), ``probs`` of probabilities. A label is predicted when ``prob >= threshold``.

Classes with neither positives nor predictions have F1 = ``zero_division`` (0 by default),
exactly as scikit-learn's ``f1_score(..., zero_division=0)``, and a class without
positives can never score above 0. A mean over all K classes is therefore diluted by
every class the evaluated images do not contain (a validation fold of a 5-class dataset
scored by a 28-class model: at most 5/28). hpatk reports ``macro_f1`` over the classes
*present* (at least one positive in the evaluated set; scikit-learn's ``labels=`` those
classes) and names the mean over all of the model's classes ``macro_f1_all`` (the
Kaggle 28-class figure when the model predicts all 28).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "apply_thresholds",
    "classification_metrics",
    "describe_macro_f1",
    "macro_f1",
    "macro_precision_recall",
    "micro_f1",
    "paper_macro_f1",
    "per_class_f1",
    "predicted_metrics",
    "present_classes",
    "subset_accuracy",
    "summary",
    "tune_thresholds",
]


def _pair(y_true: np.ndarray, y_other: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, o = np.asarray(y_true), np.asarray(y_other)
    if t.ndim != 2 or t.shape != o.shape:
        raise ValueError(f"y_true and {what} must both be (N, K) arrays of the same shape, got "
                         f"{t.shape} and {o.shape}")
    return t.astype(bool), o


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, zero_division: float) -> np.ndarray:
    denom = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), float(zero_division))


def _sk_f1(y_true: np.ndarray, y_pred: np.ndarray, average: str | None,
           labels: np.ndarray | None, zero_division: float) -> np.ndarray | float:
    """scikit-learn's ``f1_score`` on (N, K) indicators, for every K >= 1 and N >= 0."""
    from sklearn.metrics import f1_score

    t, p = _pair(y_true, y_pred, "y_pred")
    p = p.astype(bool)
    n, k = t.shape
    labels = np.arange(k) if labels is None else np.asarray(labels, dtype=int)
    if n == 0 or len(labels) == 0:  # scikit-learn refuses empty inputs
        f1 = np.full(len(labels), float(zero_division))
        return f1 if average is None else float(f1.mean()) if len(f1) else float(zero_division)
    # scikit-learn reads an (N, 1) indicator as a binary problem: a column of zeros
    # beside it keeps it multi-label (and is never among ``labels``)
    t = np.hstack([t, np.zeros((n, 1), bool)])
    p = np.hstack([p, np.zeros((n, 1), bool)])
    return f1_score(t, p, average=average, labels=labels, zero_division=zero_division)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0) -> np.ndarray:
    """F1 of every class (scikit-learn ``f1_score(average=None)``).

    Shape:
        (N, K), (N, K) -> (K,) float64.
    """
    return np.asarray(_sk_f1(y_true, y_pred, None, None, zero_division), dtype=np.float64)


def present_classes(y_true: np.ndarray) -> np.ndarray:
    """Column indices of the classes with at least one positive in ``y_true``.

    Shape:
        (N, K) -> (P,) int64, P <= K.
    """
    t = np.asarray(y_true)
    if t.ndim != 2:
        raise ValueError(f"y_true must be an (N, K) array, got shape {t.shape}")
    return np.flatnonzero(t.astype(bool).any(axis=0))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0,
             labels: np.ndarray | None = None) -> float:
    """Mean of the per-class F1 scores over ``labels`` (all K columns by default: the
    Kaggle HPA metric; pass ``present_classes(y_true)`` for the mean over the classes
    present).

    Shape:
        (N, K), (N, K) -> float.
    """
    return float(_sk_f1(y_true, y_pred, "macro", labels, zero_division))


def macro_precision_recall(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0,
                           labels: np.ndarray | None = None) -> tuple[float, float]:
    """Mean per-class precision and mean per-class recall over ``labels`` (all K columns by
    default): scikit-learn's ``precision_recall_fscore_support(average=None)`` averaged. A
    class without predictions has precision ``zero_division``, one without positives recall
    ``zero_division``.

    Shape:
        (N, K), (N, K) -> (float, float).
    """
    from sklearn.metrics import precision_recall_fscore_support

    t, p = _pair(y_true, y_pred, "y_pred")
    n, k = t.shape
    labels = np.arange(k) if labels is None else np.asarray(labels, dtype=int)
    if n == 0 or len(labels) == 0:
        return float(zero_division), float(zero_division)
    # as in _sk_f1: a zero column keeps an (N, 1) indicator multi-label
    t = np.hstack([t, np.zeros((n, 1), bool)])
    p = np.hstack([p.astype(bool), np.zeros((n, 1), bool)])
    prec, rec, _, _ = precision_recall_fscore_support(t, p, average=None, labels=labels,
                                                      zero_division=zero_division)
    return float(np.mean(prec)), float(np.mean(rec))


def paper_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0,
                   labels: np.ndarray | None = None) -> float:
    """The paper's macro F1 (Verma et al. 2020, Eq. 8): the F1 of the macro-averaged
    precision and recall over ``labels`` (all K by default), ``2 P R / (P + R)`` (0 when
    both are 0). Not the Kaggle :func:`macro_f1`; never below it on the same predictions
    and labels.

    Shape:
        (N, K), (N, K) -> float.
    """
    p, r = macro_precision_recall(y_true, y_pred, zero_division, labels)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0) -> float:
    """F1 of all N * K decisions pooled.

    Shape:
        (N, K), (N, K) -> float.
    """
    return float(_sk_f1(y_true, y_pred, "micro", None, zero_division))


def trivial_predictions(train_targets: np.ndarray, n: int,
                        names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The predictors a classifier must beat, for ``n`` images, knowing only the training
    labels: every class on every image (what maximises F1 with no information when a
    class is rare) and the most frequent training class on every image (named by
    ``names[k]`` when given, else by its column).

    Shape:
        (M, K) training targets -> {name: (n, K) 0/1}.
    """
    t = np.asarray(train_targets)
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"train_targets must be (M, K) with K >= 1, not {t.shape}")
    top = int(np.argmax(t.sum(axis=0)))
    most = np.zeros((n, t.shape[1]), np.uint8)
    most[:, top] = 1
    which = names[top] if names is not None else f"column {top}"
    return {"every class on every image": np.ones((n, t.shape[1]), np.uint8),
            f"the most frequent training class, {which}, on every image": most}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Element-wise accuracy over all N * K decisions (Keras' ``binary_accuracy``, the
    "accuracy" the paper reports). Dominated by the many true negatives.

    Shape:
        (N, K), (N, K) -> float.
    """
    t, p = _pair(y_true, y_pred, "y_pred")
    return float(np.mean(t == p.astype(bool))) if t.size else 0.0


def subset_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of images whose whole label set is right (scikit-learn's multi-label
    ``accuracy_score``).

    Shape:
        (N, K), (N, K) -> float.
    """
    from sklearn.metrics import accuracy_score

    t, p = _pair(y_true, y_pred, "y_pred")
    if len(t) == 0:
        return 0.0
    return float(accuracy_score(t.astype(np.uint8), p.astype(bool).astype(np.uint8)))


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{"macro_f1", "paper_macro_f1", "micro_f1", "accuracy", "subset_accuracy"}`` of 0/1
    predictions (``macro_f1``: Kaggle, ``paper_macro_f1``: Eq. 8)."""
    return {"macro_f1": macro_f1(y_true, y_pred),
            "paper_macro_f1": paper_macro_f1(y_true, y_pred),
            "micro_f1": micro_f1(y_true, y_pred),
            "accuracy": accuracy(y_true, y_pred),
            "subset_accuracy": subset_accuracy(y_true, y_pred)}


def predicted_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """What hpatk reports for 0/1 predictions (N, K).

    Returns:
        ``macro_f1`` (over the classes present in ``y_true``), ``macro_f1_all`` (over all
        K), ``paper_macro_f1`` (the paper's Eq. 8 over the classes present),
        ``micro_f1``, ``accuracy`` (element-wise), ``classes_present`` (P) and ``classes``
        (K), the last two as ints.
    """
    present = present_classes(y_true)
    return {"macro_f1": macro_f1(y_true, y_pred, labels=present),
            "macro_f1_all": macro_f1(y_true, y_pred),
            "paper_macro_f1": paper_macro_f1(y_true, y_pred, labels=present),
            "micro_f1": micro_f1(y_true, y_pred), "accuracy": accuracy(y_true, y_pred),
            "classes_present": int(len(present)), "classes": int(np.shape(y_true)[1])}


def classification_metrics(targets: np.ndarray, probs: np.ndarray,
                           thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """:func:`predicted_metrics` of ``probs >= thresholds`` (targets binarised at 0.5).

    Shape:
        (N, K), (N, K), (K,) or scalar -> dict.
    """
    y = (np.asarray(targets) > 0.5).astype(np.uint8)
    return predicted_metrics(y, (np.asarray(probs) >= np.asarray(thresholds)).astype(np.uint8))


def describe_macro_f1(m: dict[str, float], digits: int = 4) -> str:
    """``"macro F1 0.7450 over 5 of 28 classes present (0.1330 over all 28)"`` for a
    :func:`predicted_metrics` dict (the parenthesis only when some class is absent)."""
    p, k = int(m["classes_present"]), int(m["classes"])
    text = f"macro F1 {m['macro_f1']:.{digits}f} over {p} of {k} classes present"
    if p < k:
        text += f" ({m['macro_f1_all']:.{digits}f} over all {k})"
    return text


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray | None = None,
                    default: float = 0.5) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on (validation) probabilities.

    With ``grid=None`` the optimum is exact: every class's scores are sorted once and the F1
    of every cut is read off cumulative sums (O(N log N) per class, vectorised over K); the
    threshold is the midpoint between the last predicted and the first rejected score.
    With a ``grid`` (e.g. ``np.linspace(0.05, 0.95, 19)``) the best grid value is taken
    (coarser, less prone to fit the validation noise); ties go to the value nearest
    ``default``. A class without positives keeps ``default`` (no cut can score above 0).

    Args:
        y_true: (N, K) 0/1 labels.
        probs: (N, K) probabilities (any monotone score works).
        grid: candidate thresholds, or None for the exact optimum.
        default: the threshold of classes without positives.

    Shape:
        (N, K), (N, K) -> (K,) float64; predict ``probs >= thresholds``.
    """
    t, s = _pair(y_true, probs, "probs")
    s = s.astype(np.float64)
    n, k = s.shape
    pos = t.sum(axis=0)
    thresholds = np.full(k, float(default))
    if n == 0:
        return thresholds
    if grid is not None:
        g = np.unique(np.asarray(grid, dtype=np.float64).ravel())
        f1 = np.empty((len(g), k))
        for i, th in enumerate(g):  # G passes over (N, K): fine for grids of ~100
            pred = s >= th
            tp = np.count_nonzero(pred & t, axis=0)
            f1[i] = _f1(tp, pred.sum(axis=0) - tp, pos - tp, 0.0)
        best = f1.max(axis=0)
        best_f1 = best
        # among equal F1, the grid value nearest the default
        score = np.where(f1 >= best - 1e-12, -np.abs(g[:, None] - default), -np.inf)
        chosen = g[np.argmax(score, axis=0)]
    else:
        st, tt = np.ascontiguousarray(s.T), np.ascontiguousarray(t.T)  # (K, N): fast rows
        order = np.argsort(-st, axis=1)  # ties need no stable order: cuts skip them
        s_sorted = np.take_along_axis(st, order, axis=1)
        tp = np.cumsum(np.take_along_axis(tt, order, axis=1), axis=1)
        predicted = np.arange(1, n + 1)[None, :]
        f1 = 2 * tp / (predicted + pos[:, None])  # 2TP / (2TP + FP + FN)
        nxt = np.hstack([s_sorted[:, 1:], np.full((k, 1), -np.inf)])
        f1 = np.where(s_sorted > nxt, f1, -1.0)  # only cut between distinct scores
        cut = np.argmax(f1, axis=1)
        rows = np.arange(k)
        best_f1 = f1[rows, cut]
        hi, lo = s_sorted[rows, cut], nxt[rows, cut]
        mid = np.where(np.isfinite(lo), (hi + lo) / 2, hi)
        chosen = np.where(mid > lo, mid, hi)  # adjacent floats: keep the cut score itself
    # a cut no better than calling every image positive (the F1 a random predictor can
    # reach, 2p / (1 + p)) says nothing about the model: keep the default there
    informative = best_f1 > 2 * pos / (n + pos) + 1e-9
    return np.where((pos > 0) & informative, chosen, thresholds)


def label_rate_warning(predicted: float, expected: float, what: str = "") -> str | None:
    """A warning when the mean number of labels per image predicted is far above the
    training data's (more than twice it and at least one label more), else None.

    Args:
        predicted: mean labels per image predicted.
        expected: mean labels per image of the training data (same classes).
        what: where the predictions are (for the message).
    """
    if expected > 0 and predicted > max(2 * expected, expected + 1):
        return (f"warning: {predicted:.1f} labels per image predicted{what}, the training "
                f"data has {expected:.1f}; the model may have failed to learn (check its "
                f"validation macro F1) and its thresholds label nearly everything")
    return None


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray | float,
                     at_least_one: bool = True) -> np.ndarray:
    """0/1 predictions ``probs >= thresholds``; with ``at_least_one`` every image gets at
    least one label (every HPA image has one): where none passes, the class with the
    highest ``prob / threshold`` (the one closest to passing) is set.

    Shape:
        (N, K), (K,) or scalar -> (N, K) uint8.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be an (N, K) array, got shape {p.shape}")
    th = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
    pred = p >= th
    if at_least_one and p.shape[1]:
        empty = ~pred.any(axis=1)
        if empty.any():
            ratio = p[empty] / np.maximum(th, 1e-12)
            pred[np.flatnonzero(empty), np.argmax(ratio, axis=1)] = True
    return pred.astype(np.uint8)
