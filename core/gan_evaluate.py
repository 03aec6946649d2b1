"""``hpatk gan evaluate``: the four measures of :mod:`hpatk.core.synth_quality` for the
generators of a folder, a checkpoint or a training run, against the real images of the
cache they learnt from.

Generators are rebuilt through the registry (:func:`hpatk.core.generator.load_generator`):
any registered synthesizer works. The real images are split by each generator's own record
of the Ids it learnt from: those are the training images (memorisation, GAN-test's
classifier, the feature extractor), the cache's other images of the same classes are the
held-out ones (GAN-train's test set, the real-vs-real floor). Generators of different folds
are evaluated separately (their training images differ).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError

# evaluation.csv columns (after group/fold), in the order of the markdown table
COLUMNS = ("class", "real_train", "real_test", "synthetic", "real_on_real", "gan_train",
           "gan_test", "chance", "fd", "fd_real", "kid", "kid_sd", "kid_real", "precision",
           "recall", "copies_features", "copies_pixels", "nn_ratio_features",
           "nn_ratio_pixels")


def find_generators(path: str | os.PathLike[str]) -> list[Path]:
    """Generator checkpoints of ``path``: the file itself; a training run's (from its
    ``synthetic.csv``, and each ``fold_K/synthetic.csv``); or every ``generator.pt``
    below a folder."""
    path = Path(path)
    if not path.exists():
        raise HpatkError(f"'{path}' does not exist")
    if path.is_file():
        return [path]
    records = sorted(path.glob("synthetic.csv")) + sorted(path.glob("fold_*/synthetic.csv"))
    found: list[Path] = []
    for rec in records:
        with open(rec, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                g = (row.get("generator") or "").strip()
                if g and Path(g) not in found:
                    found.append(Path(g))
    if not records:
        found = sorted(path.rglob("generator.pt"))
    missing = [g for g in found if not g.is_file()]
    if missing:
        raise HpatkError(f"generator '{missing[0]}' (listed in '{path}') does not exist")
    if not found:
        raise HpatkError(f"'{path}' holds no generator.pt and no synthetic.csv of a run "
                         f"trained with a synthesizer --aug")
    return found


def evaluate_generators(gen_paths: list[Path], cache: str | os.PathLike[str],
                        out: str | os.PathLike[str], *, n_per_class: int = 200,
                        max_real: int = 1000, seed: int = 0, epochs: int = 30,
                        k: int = 3, copy_quantile: float = 0.01,
                        device: str | None = None) -> list[dict[str, Any]]:
    """Evaluate ``gen_paths`` on ``cache``; write ``OUT/evaluation.csv``,
    ``evaluation.md``, ``closest_pairs_<space>[_fold_K].png`` and
    ``nn_distances[_fold_K].png``.

    Args:
        n_per_class: synthetic images drawn per class.
        max_real: at most this many real training and held-out images (seeded subsample).
        epochs: of the small CNN (GAN-train, GAN-test and the features).

    Returns:
        The rows of ``evaluation.csv`` (per group: ``all`` then each class).
    """
    from hpatk.core.cache import cache_ids, cache_labels, ensure_cache, read_cache_meta
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.generator import check_against_cache, load_generator, read_images

    out = Path(out)
    cache = Path(ensure_cache(cache))
    meta = read_cache_meta(cache)
    gens = [load_generator(p, device=device) for p in gen_paths]
    for g in gens:
        check_against_cache(g, meta, resize=True)
    ids = [str(i) for i in cache_ids(cache)]
    labels = np.asarray(cache_labels(cache))
    groups: dict[Any, list[Any]] = {}
    for g in gens:
        groups.setdefault(g.ckpt.get("fold"), []).append(g)
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    sections: list[str] = []
    for fold, members in groups.items():
        classes = sorted({c for g in members for c in g.classes})
        train_ids = {str(i) for g in members for i in g.ckpt.get("train_ids") or []}
        if not train_ids:
            raise HpatkError(f"generator '{members[0].path}' records no training-image Ids; "
                             f"cannot tell its training images from held-out ones")
        rows = np.flatnonzero(labels[:, classes].any(axis=1))
        seen = np.array([ids[r] in train_ids for r in rows], bool)
        tr, te = rows[seen], rows[~seen]
        what = f"fold {fold}" if fold is not None else "generators without a fold"
        if len(te) < 2 or len(tr) <= k:
            raise HpatkError(f"{what}: {len(tr)} training and {len(te)} held-out real images "
                             f"of classes {classes} in '{cache}'; need more than {k} and 2 "
                             f"(generators fitted on every image leave nothing held out)")
        tr = np.sort(rng.permutation(tr)[:max_real])
        te = np.sort(rng.permutation(te)[:max_real])
        size = min([int(meta["size"])] + [int(g.synth.image_size or meta["size"])
                                           for g in members])
        xr, xt = read_images(cache, tr, size), read_images(cache, te, size)
        yr, yt = labels[tr][:, classes], labels[te][:, classes]
        xs, ys = _sample(members, classes, n_per_class, seed=seed, size=size)
        from hpatk.core.synth_quality import evaluate_quality

        rep = evaluate_quality((xr, yr), (xt, yt), (xs, ys), [CLASS_NAMES[c] for c in classes],
                               k=k, copy_quantile=copy_quantile, seed=seed, epochs=epochs)
        tag = "" if len(groups) == 1 else f"_fold_{fold}"
        stains = [str(s) for s in members[0].ckpt.get("stains") or meta.get("stains") or []]
        _pictures(out, tag, rep, xs, xr, stains, what)
        names = sorted({str(g.ckpt["synthesizer"]) for g in members})
        for row in rep.rows:
            results.append({"fold": "" if fold is None else fold,
                            "synthesizer": ",".join(names), **row})
        sections.append(_markdown_section(what, names, members, rep.rows, size,
                                          n_per_class, tag))
    _write(out, results, sections)
    return results


def _sample(members: list[Any], classes: list[int], n: int, *, seed: int,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images per class from the member that makes it (labels over ``classes``)."""
    from hpatk.core.generator import sample_class

    xs, ys = [], []
    for c in classes:
        g = next(g for g in members if c in g.classes)
        x, y = sample_class(g, c, n, seed=seed, size=size)
        xs.append(x)
        ys.append(y[:, classes])
    return np.concatenate(xs), np.concatenate(ys).astype(np.uint8)


def _pictures(out: Path, tag: str, rep: Any, xs: np.ndarray, xr: np.ndarray,
              stains: list[str], what: str) -> None:
    from hpatk.core.synth_quality import plot_closest_pairs, plot_nn_distances

    out.mkdir(parents=True, exist_ok=True)
    checks = rep.copies.get("all")
    if not checks:
        return
    for space, check in checks.items():
        plot_closest_pairs(xs, xr, check, stains, out / f"closest_pairs_{space}{tag}.png")
    plot_nn_distances(checks, out / f"nn_distances{tag}.png",
                      title=f"{what}: nearest real training image")


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _markdown_section(what: str, names: list[str], members: list[Any],
                      rows: list[dict[str, Any]], size: int, n: int, tag: str) -> str:
    lines = [f"## {what}: {', '.join(names)}", "",
             f"{len(members)} generator(s), {n} synthetic images per class, compared at "
             f"{size} px.", "",
             "| class | real train / held-out / synthetic | real-on-real | GAN-train | "
             "GAN-test | chance | FD (real floor) | KID x1000 (real floor) | precision | "
             "recall | copies (features / pixels) | NN ratio (features / pixels) |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['real_train']} / {r['real_test']} / {r['synthetic']} | "
            f"{_fmt(r['real_on_real'])} | {_fmt(r['gan_train'])} | {_fmt(r['gan_test'])} | "
            f"{_fmt(r['chance'])} | {_fmt(r['fd'], 2)} ({_fmt(r['fd_real'], 2)}) | "
            f"{_fmt(1000 * r['kid'], 2)} +- {_fmt(1000 * r['kid_sd'], 2)} "
            f"({_fmt(1000 * r['kid_real'], 2)}) | {_fmt(r['precision'])} | "
            f"{_fmt(r['recall'])} | {_fmt(r.get('copies_features', np.nan))} / "
            f"{_fmt(r.get('copies_pixels', np.nan))} | "
            f"{_fmt(r.get('nn_ratio_features', np.nan), 2)} / "
            f"{_fmt(r.get('nn_ratio_pixels', np.nan), 2)} |")
    lines += ["", f"![closest pairs, features](closest_pairs_features{tag}.png)",
              f"![closest pairs, pixels](closest_pairs_pixels{tag}.png)",
              f"![nearest-neighbour distances](nn_distances{tag}.png)", ""]
    return "\n".join(lines)


LEGEND = """\
- **real-on-real**: a small CNN trained on the generators' real training images, scored
  on held-out real images (top-1 hit: the predicted class is one of the image's labels).
- **GAN-train** (Shmelkov et al. 2018): the same CNN trained on the synthetic images,
  scored on the held-out real ones; near real-on-real = the samples carry what a
  classifier needs. **GAN-test**: the real-trained CNN scored on the synthetic images;
  near real-on-real = they look like their class. **chance**: the best constant guess
  (per class: a uniform guess).
- **FD / KID**: Fréchet distance (scipy.linalg.sqrtm) and KID (unbiased MMD^2, cubic
  kernel, scikit-learn; x1000, mean +- sd over subsets) of the real-trained CNN's pooled
  features, synthetic vs real training images; in brackets the floor, held-out real vs
  real training images. NOT comparable to published Inception FIDs/KIDs.
- **precision / recall** (Kynkäänniemi et al. 2019, k-NN manifolds of the same features):
  share of synthetic images inside the real manifold / of real images inside the
  synthetic one.
- **copies**: share of synthetic images nearer to a training image than all but the
  closest 1% of held-out real images are (likely memorised); **NN ratio**: median
  synthetic-to-nearest-training distance / the same for held-out real images (about 1:
  as novel as new real images; near 0: copies). Pixel space: images area-resized to at
  most 64 px.
"""


def _write(out: Path, results: list[dict[str, Any]], sections: list[str]) -> None:
    from hpatk.core.io import atomic_open

    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "evaluation.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["fold", "synthesizer", *COLUMNS],
                           extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({key: (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v)
                        for key, v in r.items()})
    text = "\n".join(["# Synthetic image quality (hpatk gan evaluate)", "", LEGEND,
                      *sections])
    with atomic_open(out / "evaluation.md", "w", encoding="utf-8") as f:
        f.write(text)
