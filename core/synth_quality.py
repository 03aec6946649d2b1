"""How good are synthetic images? Four measures on arrays, for any generator.

- **GAN-train / GAN-test** (Shmelkov, Schmid, Alahari, "How good is my GAN?", ECCV 2018):
  a small CNN trained on synthetic images and scored on held-out real ones (GAN-train:
  do the samples carry what a classifier needs?), and one trained on real images scored on
  the synthetic ones (GAN-test: do they look like their class?), each against the
  real-on-real reference. Score: the top-1 hit rate (the predicted class is one of the
  image's labels), with the best constant guess as the chance level.
- **Feature Fréchet distance and KID** on features of that real-trained CNN (its global
  average pool), *not* Inception features: the numbers are **not comparable to published
  FIDs/KIDs**; compare generators with each other and with the real-vs-real floor (held-out
  real images against the training images). Fréchet distance: ``scipy.linalg.sqrtm``
  (Heusel et al. 2017); KID: the unbiased MMD^2 of Bińkowski et al. 2018 with
  scikit-learn's ``polynomial_kernel`` (degree 3, gamma 1/D, coef0 1), mean and sd over
  random subsets.
- **Precision / recall of distributions** (Kynkäänniemi et al., NeurIPS 2019): k-NN
  manifolds of the same features (scikit-learn ``NearestNeighbors``); precision = share
  of synthetic samples inside the real manifold, recall = share of real samples inside
  the synthetic one.
- **Memorisation**: each synthetic image's nearest real training image in feature and in
  pixel space, against the nearest-training distances of held-out real images; a synthetic
  image closer than the ``copy_quantile`` of those is flagged as a likely copy.

Inputs are uint8 images (N, C, S, S) and uint8 label matrices (N, K) over the evaluated
classes; core only (no plugin imports): the `gan evaluate` command wires generators to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CopyCheck",
    "QualityReport",
    "SmallCNN",
    "evaluate_quality",
    "frechet_distance",
    "gan_train_test",
    "hit_rate",
    "kid",
    "memorisation",
    "plot_closest_pairs",
    "plot_nn_distances",
    "precision_recall",
    "train_small_cnn",
]

FEATURE_NOTE = ("Fréchet distance and KID on features of a small CNN trained on the real "
                "images (not Inception): not comparable to published FID/KID values.")


# -- distances between feature sets ---------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (the FID formula).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))``, with ``scipy.linalg.sqrtm``;
    when the product is singular, ``eps`` is added to both diagonals (as pytorch-fid).

    Shape:
        (N, D), (M, D) -> float (N, M >= 2).
    """
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N, D) feature sets with N >= 2, got {a.shape}, {b.shape}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    off = np.eye(len(sa)) * eps
    if min(np.linalg.matrix_rank(sa), np.linalg.matrix_rank(sb)) < len(sa):
        sa, sb = sa + off, sb + off  # dead features (ReLU) make a covariance singular
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():
        covmean = linalg.sqrtm((sa + off) @ (sb + off))
    covmean = np.real(covmean)  # imaginary parts are numerical noise
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean), 0.0))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance formula on any features: the unbiased MMD^2 with the
    cubic polynomial kernel (scikit-learn), mean and sd over ``subsets`` random subsets of
    ``min(subset_size, N, M)`` samples of each set.

    Shape:
        (N, D), (M, D) -> (mean, sd).
    """
    from sklearn.metrics.pairwise import polynomial_kernel

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = polynomial_kernel(x, degree=3, coef0=1)
        kyy = polynomial_kernel(y, degree=3, coef0=1)
        kxy = polynomial_kernel(x, y, degree=3, coef0=1)
        off = m * (m - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each sample's k-NN radius in its own set (k-th neighbour, itself excluded) defines a
    manifold (a union of balls); precision = share of ``fake`` inside the real manifold,
    recall = share of ``real`` inside the fake one.

    Shape:
        (N, D), (M, D) -> (precision, recall), N, M > k.
    """
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    return _inside(real, fake, k), _inside(fake, real, k)


def _inside(ref: np.ndarray, query: np.ndarray, k: int) -> float:
    """Share of ``query`` within the k-NN radius of at least one ``ref`` sample."""
    from sklearn.neighbors import NearestNeighbors

    if len(ref) <= k or len(query) == 0:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    nn = NearestNeighbors(n_neighbors=k + 1).fit(ref)
    radius = nn.kneighbors(ref)[0][:, -1]  # the first neighbour is the sample itself
    order = np.argsort(radius)[::-1]
    # a query is inside when its distance to some ref point is <= that point's radius
    inside = np.zeros(len(query), bool)
    for start in range(0, len(ref), 4096):  # chunks bound the (Q, chunk) distance matrix
        idx = order[start:start + 4096]
        d = _pairwise(query[~inside], ref[idx])
        inside[np.flatnonzero(~inside)[(d <= radius[idx][None, :]).any(axis=1)]] = True
        if inside.all():
            break
    return float(inside.mean())


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(x, y) if len(x) else np.zeros((0, len(y)))


# -- memorisation ---------------------------------------------------------------------------
@dataclass
class CopyCheck:
    """Nearest training image of every synthetic one (one space: features or pixels)."""

    space: str
    distance: np.ndarray  # (M,) synthetic -> nearest training image
    index: np.ndarray  # (M,) its row in the training set
    reference: np.ndarray  # (R,) held-out real -> nearest training image
    threshold: float  # ``copy_quantile`` of ``reference``
    flagged: np.ndarray  # (M,) bool: closer than any but the closest real images

    @property
    def flagged_share(self) -> float:
        return float(self.flagged.mean()) if len(self.flagged) else 0.0

    @property
    def median_ratio(self) -> float:
        """Median synthetic nearest distance / median real-to-real nearest distance."""
        ref = float(np.median(self.reference)) if len(self.reference) else float("nan")
        return float(np.median(self.distance)) / ref if ref > 0 else float("nan")


def memorisation(synthetic: np.ndarray, train: np.ndarray, held_out: np.ndarray, *,
                 space: str = "features", copy_quantile: float = 0.01) -> CopyCheck:
    """Nearest ``train`` row of each ``synthetic`` row, against the nearest-``train``
    distances of ``held_out`` real rows (what a new image of the same data looks like).

    Shape:
        (M, D), (N, D), (R, D) -> :class:`CopyCheck`.
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1).fit(np.asarray(train, dtype=np.float32))
    d, i = nn.kneighbors(np.asarray(synthetic, dtype=np.float32))
    ref = nn.kneighbors(np.asarray(held_out, dtype=np.float32))[0][:, 0]
    thr = float(np.quantile(ref, copy_quantile)) if len(ref) else 0.0
    return CopyCheck(space, d[:, 0], i[:, 0], ref, thr, d[:, 0] < thr)


def pixel_vectors(images: np.ndarray, max_size: int = 64) -> np.ndarray:
    """uint8 (N, C, S, S) -> float32 (N, C * s * s) in [0, 1], area-resized to at most
    ``max_size`` px (pixel-space neighbours of 512 px images would need GBs)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    if x.shape[-1] > max_size:
        x = F.interpolate(x, size=(max_size, max_size), mode="area")
    return x.reshape(len(x), -1).numpy()


# -- the small classifier (GAN-train / GAN-test, features) ----------------------------------
def _to_tensor(images: np.ndarray, size: int) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size
                          else "bilinear", align_corners=None if x.shape[-1] > size else False)
    return x


class SmallCNN:
    """Three conv blocks -> global average pool (the feature vector) -> linear, for K
    classes; images are area-resized to ``size`` px. Trained by :func:`train_small_cnn`."""

    def __init__(self, channels: int, classes: int, size: int = 32, width: int = 32) -> None:
        from torch import nn

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.size = size
        self.features = nn.Sequential(block(channels, width), block(width, 2 * width),
                                      block(2 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, classes)
        self.net = nn.Sequential(self.features, self.head)

    def embed(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Feature vectors (eval mode). Shape: uint8 (N, C, S, S) -> float32 (N, 4 width)."""
        import torch

        self.net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(images), batch):
                out.append(self.features(_to_tensor(images[s:s + batch], self.size)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.head.in_features), np.float32)

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Top-1 class (column of the label matrix). Shape: (N, C, S, S) -> (N,) int."""
        import torch

        f = torch.from_numpy(self.embed(images, batch))
        with torch.no_grad():
            return self.head(f).argmax(1).numpy()


def train_small_cnn(images: np.ndarray, labels: np.ndarray, *, epochs: int = 30,
                    size: int = 32, width: int = 32, seed: int = 0, lr: float = 2e-3,
                    batch: int = 64) -> SmallCNN:
    """Train :class:`SmallCNN` with soft-target cross-entropy: an image with several of
    the K labels counts for each equally (the top-1 class is then scored as a hit when it
    is any of them). Deterministic for ``seed`` on the CPU.

    Shape:
        uint8 (N, C, S, S), uint8 (N, K) with at least one label per row.
    """
    import torch

    y = np.asarray(labels, dtype=np.float32)
    if len(images) != len(y) or (y.sum(1) == 0).any():
        raise ValueError("every image needs at least one of the K labels")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(images.shape[1], y.shape[1], size=size, width=width)
    x = _to_tensor(images, size)
    t = torch.from_numpy(y / y.sum(1, keepdims=True))
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    model.net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = x[idx]
            flip = torch.rand(len(xb), 2, generator=gen) < 0.5  # the classic flips
            xb = torch.where(flip[:, 0, None, None, None], xb.flip(-1), xb)
            xb = torch.where(flip[:, 1, None, None, None], xb.flip(-2), xb)
            loss = torch.nn.functional.cross_entropy(model.net(xb), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.net.eval()
    return model


def hit_rate(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose predicted class (column) is one of their labels."""
    labels = np.asarray(labels)
    return float(labels[np.arange(len(pred)), pred].astype(bool).mean()) if len(pred) else 0.0


def chance_rate(labels: np.ndarray) -> float:
    """The best constant guess's hit rate: the largest share of images carrying one class."""
    labels = np.asarray(labels, dtype=bool)
    return float(labels.mean(0).max()) if len(labels) else 0.0


def gan_train_test(real_train: tuple[np.ndarray, np.ndarray], real_test: tuple[np.ndarray,
                   np.ndarray], synthetic: tuple[np.ndarray, np.ndarray], *,
                   reference: SmallCNN | None = None, **train_kw: Any) -> dict[str, Any]:
    """GAN-train and GAN-test (Shmelkov et al. 2018) with :class:`SmallCNN`.

    Args:
        real_train: (images uint8 (N, C, S, S), labels uint8 (N, K)) the reference trains on.
        real_test: the same pair, held out: what both CNNs are scored on.
        synthetic: the same pair, generated.
        reference: the CNN already trained on ``real_train`` (trained here when None).
        train_kw: :func:`train_small_cnn` options (epochs, size, width, seed).

    Returns:
        ``real_on_real`` (the reference's hit rate on ``real_test``), ``gan_train`` (a CNN
        trained on ``synthetic``, scored on ``real_test``), ``gan_test`` (the reference on
        ``synthetic``), ``chance`` (best constant guess on ``real_test``), the same per
        class (``per_class``: K dicts, on the images carrying the class) and ``reference``.
    """
    (xr, yr), (xt, yt), (xs, ys) = real_train, real_test, synthetic
    ref = reference or train_small_cnn(xr, yr, **train_kw)
    on_synth = train_small_cnn(xs, ys, **train_kw)
    p_rr, p_gt, p_st = ref.predict(xt), ref.predict(xs), on_synth.predict(xt)
    per_class = []
    for c in range(yt.shape[1]):
        t, s = yt[:, c] > 0, ys[:, c] > 0
        per_class.append({"real_on_real": hit_rate(p_rr[t], yt[t]),
                          "gan_train": hit_rate(p_st[t], yt[t]),
                          "gan_test": hit_rate(p_gt[s], ys[s]),
                          # a uniform guess hits |labels| / K of the time
                          "chance": float(yt[t].sum(1).mean() / yt.shape[1]) if t.any()
                          else 0.0})
    return {"real_on_real": hit_rate(p_rr, yt), "gan_train": hit_rate(p_st, yt),
            "gan_test": hit_rate(p_gt, ys), "chance": chance_rate(yt), "per_class": per_class,
            "reference": ref}


# -- everything at once -------------------------------------------------------------------
@dataclass
class QualityReport:
    """The four measures, overall (``rows[0]``, class ``"all"``) and per class."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    copies: dict[str, dict[str, CopyCheck]] = field(default_factory=dict)  # class -> space ->
    note: str = FEATURE_NOTE


def evaluate_quality(real_train: tuple[np.ndarray, np.ndarray],
                     real_test: tuple[np.ndarray, np.ndarray],
                     synthetic: tuple[np.ndarray, np.ndarray], class_names: list[str], *,
                     k: int = 3, copy_quantile: float = 0.01, seed: int = 0,
                     epochs: int = 30, size: int = 32, width: int = 32,
                     reference: SmallCNN | None = None) -> QualityReport:
    """All four measures of ``synthetic`` against the real images, overall and per class.

    Features come from the GAN-test reference CNN (trained on ``real_train``). The
    real-vs-real floor of FD and KID (``real_test`` against ``real_train``) is reported
    beside the synthetic values: with finite samples even real images do not score 0.

    Args:
        real_train: the generators' training images and labels (N, C, S, S), (N, K).
        real_test: held-out real images of the same classes (never seen by generators).
        synthetic: generated images and the labels they were generated for.
        class_names: K names, in label-column order.
        reference: a :class:`SmallCNN` already trained on ``real_train`` (to compare
            several generators on the same features); trained here when None.
    """
    gt = gan_train_test(real_train, real_test, synthetic, reference=reference, epochs=epochs,
                        size=size, width=width, seed=seed)
    ref: SmallCNN = gt["reference"]
    (xr, yr), (xt, yt), (xs, ys) = real_train, real_test, synthetic
    fr, ft, fs = ref.embed(xr), ref.embed(xt), ref.embed(xs)
    pr, pt, ps = pixel_vectors(xr), pixel_vectors(xt), pixel_vectors(xs)
    report = QualityReport()
    groups = [("all", np.ones(len(yr), bool), np.ones(len(yt), bool), np.ones(len(ys), bool),
               gt)]
    groups += [(class_names[c], yr[:, c] > 0, yt[:, c] > 0, ys[:, c] > 0, gt["per_class"][c])
               for c in range(yr.shape[1])]
    for name, r, t, s, g in groups:
        row: dict[str, Any] = {"class": name, "real_train": int(r.sum()),
                               "real_test": int(t.sum()), "synthetic": int(s.sum()),
                               **{key: g[key] for key in ("real_on_real", "gan_train",
                                                          "gan_test", "chance")}}
        ok = min(r.sum(), s.sum()) > k and t.sum() > 1
        row["fd"] = frechet_distance(fr[r], fs[s]) if ok else float("nan")
        row["fd_real"] = frechet_distance(fr[r], ft[t]) if ok else float("nan")
        row["kid"], row["kid_sd"] = kid(fr[r], fs[s], seed=seed) if ok else (np.nan, np.nan)
        row["kid_real"] = kid(fr[r], ft[t], seed=seed)[0] if ok else float("nan")
        row["precision"], row["recall"] = (precision_recall(fr[r], fs[s], k) if ok
                                           else (np.nan, np.nan))
        if s.sum() and r.sum() and t.sum():
            checks = {"features": memorisation(fs[s], fr[r], ft[t], space="features",
                                               copy_quantile=copy_quantile),
                      "pixels": memorisation(ps[s], pr[r], pt[t], space="pixels",
                                             copy_quantile=copy_quantile)}
            # indices into the full training set, for the picture
            rows_r = np.flatnonzero(r)
            for c in checks.values():
                c.index = rows_r[c.index]
            report.copies[name] = checks
            row["copies_features"] = checks["features"].flagged_share
            row["copies_pixels"] = checks["pixels"].flagged_share
            row["nn_ratio_features"] = checks["features"].median_ratio
            row["nn_ratio_pixels"] = checks["pixels"].median_ratio
        report.rows.append(row)
    return report


def plot_closest_pairs(synthetic: np.ndarray, train: np.ndarray, check: CopyCheck,
                       stains: list[str], path: str | os.PathLike[str], n: int = 8,
                       synthetic_rows: np.ndarray | None = None) -> Path:
    """The ``n`` synthetic images closest to a training image, each above its nearest
    training image, with the distance and the real-to-real ``copy_quantile`` threshold.

    Args:
        synthetic_rows: rows of ``synthetic`` that ``check`` describes (all when None).
    """
    from hpatk.core.picture import composite, pyplot, save_figure

    plt = pyplot()

    rows = np.arange(len(synthetic)) if synthetic_rows is None else np.asarray(synthetic_rows)
    order = np.argsort(check.distance)[:n]
    fig, ax = plt.subplots(2, max(len(order), 1), figsize=(1.6 * max(len(order), 1), 3.6),
                           squeeze=False)
    for j, o in enumerate(order):
        for i, img in enumerate((synthetic[rows[o]], train[check.index[o]])):
            ax[i, j].imshow(composite(img, stains))
            ax[i, j].set_xticks([])
            ax[i, j].set_yticks([])
        ax[0, j].set_title(f"d={check.distance[o]:.3g}", fontsize=8,
                           color="red" if check.flagged[o] else "black")
    ax[0, 0].set_ylabel("synthetic", fontsize=8)
    ax[1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle(f"closest pairs ({check.space}); real-to-real {check.threshold:.3g} at the "
                 f"flag quantile", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def plot_nn_distances(checks: dict[str, CopyCheck], path: str | os.PathLike[str],
                      title: str = "") -> Path:
    """Histograms of synthetic -> nearest training distances against held-out real ->
    nearest training distances, one panel per space, the flag threshold dashed."""
    from hpatk.core.picture import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(checks), figsize=(5 * len(checks), 3.4), squeeze=False)
    for ax, (space, c) in zip(axes[0], checks.items(), strict=True):
        both = np.concatenate([c.distance, c.reference])
        bins = np.linspace(0, float(both.max()) if len(both) and both.max() > 0 else 1, 30)
        ax.hist(c.reference, bins=bins, alpha=0.6, density=True, label="held-out real")
        ax.hist(c.distance, bins=bins, alpha=0.6, density=True, label="synthetic")
        ax.axvline(c.threshold, ls="--", color="k", lw=1, label="copy threshold")
        ax.set(xlabel=f"distance to the nearest training image ({space})", ylabel="density")
        ax.legend(fontsize=8)
    fig.suptitle(title or "nearest training image", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
