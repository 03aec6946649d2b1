"""core/synth_quality on constructed cases: a "generator" returning real images scores like
real data and one returning noise at chance; the Fréchet distance is 0 for identical sets
and grows with a shift; precision/recall on point clouds; memorisation flags a copier."""

from __future__ import annotations

import numpy as np
import pytest
from hpatk.core.synth_quality import (
    evaluate_quality,
    frechet_distance,
    gan_train_test,
    kid,
    memorisation,
    plot_closest_pairs,
    precision_recall,
    train_small_cnn,
)

K, S = 3, 16
CNN = dict(epochs=10, size=16, width=8, seed=0)


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (3 stains, 16 px) of K classes: a bright square somewhere in the class's
    own stain (flip-invariant, as the small CNN trains with flips)."""
    rng = np.random.default_rng(seed)
    y = np.eye(K, dtype=np.uint8)[np.arange(n) % K]
    x = rng.integers(0, 60, (n, 3, S, S)).astype(np.uint8)
    for i, c in enumerate(np.arange(n) % K):
        r0, c0 = rng.integers(0, S - 6, 2)
        x[i, c, r0:r0 + 6, c0:c0 + 6] = rng.integers(180, 256, (6, 6))
    return x, y


def noise(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, S, S)).astype(np.uint8),
            np.eye(K, dtype=np.uint8)[np.arange(n) % K])


@pytest.fixture(scope="module")
def real():
    return images(60, 0), images(60, 1)


@pytest.fixture(scope="module")
def reference(real):
    """The real-trained CNN, once for every test (CPU time is scarce)."""
    return train_small_cnn(*real[0], **CNN)


def test_gan_train_test_real_generator_scores_like_real(real, reference):
    train, test = real
    g = gan_train_test(train, test, images(60, 2), reference=reference, **CNN)
    assert g["real_on_real"] > 0.9
    assert g["gan_train"] >= g["real_on_real"] - 0.1
    assert g["gan_test"] >= g["real_on_real"] - 0.1
    assert g["chance"] == pytest.approx(1 / 3)


def test_gan_train_test_noise_generator_scores_at_chance(real, reference):
    train, test = real
    g = gan_train_test(train, test, noise(60, 3), reference=reference, **CNN)
    assert g["real_on_real"] > 0.9
    assert abs(g["gan_train"] - 1 / 3) < 0.2, g["gan_train"]
    assert abs(g["gan_test"] - 1 / 3) < 0.2, g["gan_test"]


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    a = np.random.default_rng(0).normal(size=(300, 6))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # same covariance: FD = |shift|^2 = D s^2
    fds = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert fds == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-6)
    # a scale change with equal means: tr((sqrt(S) - sqrt(c^2 S))^2) = (1 - c)^2 tr(S)
    c = 2.0
    assert frechet_distance(a, c * (a - a.mean(0)) + a.mean(0)) == pytest.approx(
        (1 - c) ** 2 * np.trace(np.cov(a, rowvar=False)), rel=1e-5)


def test_kid_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kid(a, b, subsets=10, subset_size=200)
    shifted = [kid(a, b + s, subsets=10, subset_size=200)[0] for s in (0.5, 1.0)]
    assert abs(same) < 0.05 and shifted[0] > 5 * abs(same) + 0.05 and shifted[1] > shifted[0]


def test_precision_recall_on_point_clouds():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(500, 2))
    p, r = precision_recall(real, rng.normal(size=(500, 2)))
    assert p > 0.85 and r > 0.85  # one distribution
    p, r = precision_recall(real, rng.normal(scale=0.1, size=(500, 2)))
    assert p > 0.95 and r < 0.3  # mode collapse: realistic but not diverse
    p, r = precision_recall(real, rng.normal(loc=10, size=(500, 2)))
    assert p == 0 and r == 0  # another place altogether
    p, r = precision_recall(real, rng.normal(scale=3, size=(500, 2)))
    assert r > 0.95 and p < 0.5  # diverse but mostly unrealistic


def test_memorisation_flags_a_copier():
    rng = np.random.default_rng(3)
    train, held_out = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
    copier = memorisation(train[:50] + rng.normal(scale=1e-4, size=(50, 8)), train, held_out)
    assert copier.flagged_share == 1.0 and (copier.index == np.arange(50)).all()
    fresh = memorisation(rng.normal(size=(50, 8)), train, held_out)
    assert fresh.flagged_share < 0.1 and 0.7 < fresh.median_ratio < 1.4
    assert copier.median_ratio < 0.01


@pytest.mark.slow
def test_evaluate_quality_real_noise_and_copier(real, reference, tmp_path):
    train, test = real
    names = ["a", "b", "c"]
    kw = dict(epochs=CNN["epochs"], size=16, width=8, reference=reference)
    good = evaluate_quality(train, test, images(60, 4), names, **kw)
    bad = evaluate_quality(train, test, noise(60, 5), names, **kw)
    copy = evaluate_quality(train, test, (train[0][:45].copy(), train[1][:45]), names, **kw)
    g, b, c = good.rows[0], bad.rows[0], copy.rows[0]
    assert [r["class"] for r in good.rows] == ["all", *names]
    assert g["fd"] < b["fd"] and g["kid"] < b["kid"]
    assert g["precision"] > b["precision"] and g["recall"] > b["recall"]
    assert c["copies_pixels"] == 1.0 and c["copies_features"] == 1.0
    assert g["copies_pixels"] < 0.2
    check = copy.copies["all"]["pixels"]
    png = plot_closest_pairs(train[0][:45], train[0], check, ["green", "red", "blue"],
                             tmp_path / "pairs.png")
    assert png.stat().st_size > 1000
