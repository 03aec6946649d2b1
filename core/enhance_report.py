"""The paper's contrast-enhancement comparison (``hpatk enhance compare``).

Each enhancer's output is compared with the original image by MSE, PSNR and SSIM, as the
paper compares HE, AHE and CLAHE; the table holds the mean and the sample standard
deviation (n - 1) over the images. A picture grid (original and every method, stains
as an RGB composite) shows the difference at a glance.

Metric definitions, per image, on the 0..255 gray-level scale over all stains:
- MSE: mean squared difference over every pixel of every stain.
- PSNR: ``10 log10(255^2 / MSE)`` dB (infinite for an unchanged image).
- SSIM: Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  population covariances, over the region the window fits in ("valid"), per stain, then
  averaged over stains -- the same numbers as ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
  channel_axis=0)``. On the CPU the Gaussian filtering is OpenCV's ``sepFilter2D`` (6x
  less CPU time than a torch convolution in float64); on a GPU, kornia's separable filter.

Heavy modules (torch, kornia, cv2, matplotlib) are imported inside functions.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.classes import STAINS
from hpatk.core.errors import HpatkError
from hpatk.core.io import atomic_open
from hpatk.core.picture import composite, pyplot, save_figure

if TYPE_CHECKING:
    import numpy as np
    import torch

METRICS = ("mse", "psnr", "ssim")
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


# -- metrics ----------------------------------------------------------------------------
def _check_ssim_pair(x: tuple[int, ...], y: tuple[int, ...], what: str) -> None:
    """Raise HpatkError unless shapes ``x`` and ``y`` are one (N, H, W) of at least the
    SSIM window."""
    if x != y or len(x) != 3:
        raise HpatkError(f"ssim expects two (N, H, W) {what} of one shape, got {x} and {y}")
    if min(x[-2:]) < SSIM_WINDOW:
        raise HpatkError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                         f"got {x[-1]}x{x[-2]}")


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Mean SSIM of each plane pair (Gaussian window 11 / sigma 1.5, "valid" region).

    Args:
        x: reference planes, float (float64 recommended), any device.
        y: planes to compare, same shape.
        data_range: the value range (255 for gray levels).

    Returns:
        float tensor (N,): the mean SSIM of each plane.

    Shape:
        (N, H, W), (N, H, W) -> (N,); H and W must be at least 11.
    """
    import torch
    from kornia.filters import filter2d_separable, get_gaussian_kernel1d

    _check_ssim_pair(tuple(x.shape), tuple(y.shape), "tensors")
    n = x.shape[0]
    kernel = get_gaussian_kernel1d(SSIM_WINDOW, SSIM_SIGMA, device=x.device, dtype=x.dtype)
    kernel = kernel.reshape(1, SSIM_WINDOW)
    # one depthwise separable pass filters all five moment images of all planes
    moments = torch.cat([x, y, x * x, y * y, x * y])[None]
    mx, my, xx, yy, xy = filter2d_separable(moments, kernel, kernel, padding="valid")[0].split(n)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    var_x, var_y, cov = xx - mx * mx, yy - my * my, xy - mx * my
    num = (2 * mx * my + c1) * (2 * cov + c2)
    den = (mx * mx + my * my + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(-2, -1))


def ssim_cpu(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """:func:`ssim` on the CPU with OpenCV's separable filter, float64.

    Shape:
        (N, H, W), (N, H, W) -> (N,)
    """
    import cv2
    import numpy as np

    _check_ssim_pair(tuple(x.shape), tuple(y.shape), "arrays")
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)
    r = SSIM_WINDOW // 2
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2

    def blur(m: np.ndarray) -> np.ndarray:  # the "valid" region: the border mode is moot
        return cv2.sepFilter2D(m, cv2.CV_64F, kernel, kernel)[r:-r, r:-r]

    out = np.empty(x.shape[0])
    for i, (a, b) in enumerate(zip(x.astype(np.float64), y.astype(np.float64), strict=True)):
        mx, my, xx, yy, xy = blur(a), blur(b), blur(a * a), blur(b * b), blur(a * b)
        num = (2 * mx * my + c1) * (2 * (xy - mx * my) + c2)
        den = (mx * mx + my * my + c1) * ((xx - mx * mx) + (yy - my * my) + c2)
        out[i] = float((num / den).mean())
    return out


def image_metrics(original: np.ndarray, enhanced: np.ndarray, *, device: str = "cpu"
                  ) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of ``enhanced`` against ``original`` (see the module doc).

    Args:
        original: uint8 image.
        enhanced: uint8 image of the same shape.
        device: "cpu" (numpy + OpenCV) or a torch device such as "cuda" (kornia); float64.

    Returns:
        ``{"mse": ..., "psnr": ..., "ssim": ...}``.

    Shape:
        (C, H, W), (C, H, W) -> three floats.
    """
    import numpy as np

    if original.shape != enhanced.shape or original.ndim != 3:
        raise HpatkError(f"image_metrics expects two (C, H, W) images of one shape, got "
                         f"{original.shape} and {enhanced.shape}")
    diff = original.astype(np.float64) - enhanced.astype(np.float64)
    mse = float(np.mean(diff * diff))
    psnr = 10.0 * math.log10(255.0**2 / mse) if mse > 0 else math.inf
    if device == "cpu":
        ssim_value = float(ssim_cpu(original, enhanced).mean())
    else:
        import torch

        x = torch.from_numpy(original).to(device=device, dtype=torch.float64)
        y = torch.from_numpy(enhanced).to(device=device, dtype=torch.float64)
        ssim_value = float(ssim(x, y).mean())
    return {"mse": mse, "psnr": psnr, "ssim": ssim_value}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1 or not math.isfinite(mean):
        return mean, 0.0 if n == 1 else math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


# -- the comparison ---------------------------------------------------------------------
@dataclass
class EnhanceComparison:
    """Per-image metrics of every method, plus what produced them.

    ``rows``: one dict per (image, method): ``id``, ``method``, ``mse``, ``psnr``, ``ssim``.
    ``examples``: a few ``(id, {"original": img, method: img, ...})`` for the picture grid
    (uint8 (C, H, W)).
    """

    methods: list[str]
    configs: dict[str, dict[str, Any]]
    stains: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    examples: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per method: ``n`` and mean / sd of each metric, in method order."""
        out = []
        for method in self.methods:
            rows = [r for r in self.rows if r["method"] == method]
            row: dict[str, Any] = {"method": method, "n": len(rows)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([r[metric] for r in rows])
            out.append(row)
        return out


def _sample(n_total: int, n: int | None, seed: int) -> list[int]:
    """``n`` indices out of ``n_total``, reproducibly random, in dataset order."""
    import numpy as np

    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(np.random.default_rng(seed).choice(n_total, size=n, replace=False).tolist())


def compare_enhancers(data_dir: str | os.PathLike[str],
                      methods: Sequence[str] = ("he", "ahe", "clahe"), *,
                      n: int | None = 200, size: int | None = None, seed: int = 0,
                      stains: Sequence[str] = STAINS,
                      params: Mapping[str, Mapping[str, Any]] | None = None,
                      device: str = "auto", show: int = 4) -> EnhanceComparison:
    """Enhance a sample of a Kaggle-layout dataset with each method and measure it.

    Args:
        data_dir: dataset folder (train.csv + train/).
        methods: enhancer names from the registry.
        n: images to sample (reproducibly, by ``seed``); None for all.
        size: compare at ``size`` x ``size``: the original resized with ``cv2.INTER_AREA``
            against :func:`hpatk.core.preprocess.preprocess` (enhanced at the original
            size, then resized: what the classifier sees); None keeps the original size.
        seed: sampling seed.
        stains: stains to load, in order.
        params: per-method enhancer parameters, e.g. ``{"clahe": {"clip_limit": 3.0}}``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``: passed to enhancers that take a
            ``device`` (the built-ins) when not "auto", and used for the metrics.
        show: how many images to keep for the picture grid.

    Returns:
        An :class:`EnhanceComparison`.

    Raises:
        HpatkError: unknown method or parameter, unreadable data (one line).
    """
    from hpatk.core.data import load_stains, parse_stains, read_kaggle
    from hpatk.core.preprocess import make_enhancer, preprocess
    from hpatk.core.progress import progress

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise HpatkError("--methods: name at least one enhancer")
    params = dict(params or {})
    unknown = sorted(set(params) - set(methods))
    if unknown:
        raise HpatkError(f"--param names method '{unknown[0]}', which is not in --methods "
                         f"({','.join(methods)})")
    if n is not None and n < 1:
        raise HpatkError(f"--n must be at least 1, not {n}")
    stains = parse_stains(stains)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise HpatkError("--device cuda: CUDA is not available (use --device auto or cpu)")
    enhancers = {}
    for method in methods:
        extra = dict(params.get(method, {}))
        if device != "auto":
            extra.setdefault("device", device)
        try:
            enhancers[method] = make_enhancer(method, extra)
        except HpatkError as exc:
            if str(exc).startswith(("unknown enhancer", "enhancer '")):
                raise
            raise HpatkError(f"enhancer '{method}': {exc}") from exc
    metric_device = _metric_device(device)

    refs = read_kaggle(data_dir, stains=stains)
    chosen = [refs[i] for i in _sample(len(refs), n, seed)]
    result = EnhanceComparison(
        methods=methods, configs={m: e.config() for m, e in enhancers.items()},
        stains=stains, settings={"data_dir": str(data_dir), "n": len(chosen),
                                 "size": size, "seed": seed, "device": device})
    for ref in progress(chosen, desc="enhance compare", unit="img"):
        image = load_stains(ref, stains)
        original = preprocess(image, None, size)
        outputs = {m: preprocess(image, enh, size) for m, enh in enhancers.items()}
        for method, enhanced in outputs.items():
            scores = image_metrics(original, enhanced, device=metric_device)
            result.rows.append({"id": ref.id, "method": method, **scores})
        if len(result.examples) < show:
            result.examples.append((ref.id, {"original": original, **outputs}))
    return result


def _metric_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# -- outputs ----------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "inf" if value == math.inf else f"{value:.{digits}f}"


def summary_markdown(result: EnhanceComparison) -> str:
    """The paper's table as markdown: mean ± sd of MSE, PSNR and SSIM per method."""
    lines = ["| method | parameters | n | MSE | PSNR (dB) | SSIM |",
             "|---|---|---:|---:|---:|---:|"]
    for row in result.summary():
        cfg = {k: v for k, v in result.configs[row["method"]].items() if k != "name"}
        cfg_text = ", ".join(f"{k}={_plain(v)}" for k, v in cfg.items()) or "-"
        cells = [f"{_fmt(row[f'{m}_mean'], d)} ± {_fmt(row[f'{m}_sd'], d)}"
                 for m, d in (("mse", 1), ("psnr", 2), ("ssim", 3))]
        lines.append(f"| {row['method']} | {cfg_text} | {row['n']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


def render_grid(result: EnhanceComparison, path: str | os.PathLike[str]) -> Path:
    """PNG picture grid: one row per example image, columns original + each method. Each
    method's column title gives its mean SSIM to the original over all compared images,
    and each cell that image's own SSIM. Written atomically.

    Shape:
        each cell shows an (H, W, 3) composite of the (C, H, W) image.
    """
    plt = pyplot()

    if not result.examples:
        raise HpatkError("no images to draw")
    columns = ["original", *result.methods]
    summary = {r["method"]: r for r in result.summary()}
    ssim_of = {(r["id"], r["method"]): r["ssim"] for r in result.rows}
    rows = len(result.examples)
    fig, axes = plt.subplots(rows, len(columns), squeeze=False,
                             figsize=(2.6 * len(columns), 2.75 * rows + 0.9))
    for r, (image_id, images) in enumerate(result.examples):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(composite(images[name], result.stains), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                title = name if name == "original" else (
                    f"{name}\nmean SSIM {summary[name]['ssim_mean']:.3f} "
                    f"({summary[name]['n']} images)")
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id[:13], fontsize=7)
            elif (image_id, name) in ssim_of:
                ax.set_xlabel(f"SSIM {ssim_of[(image_id, name)]:.3f}", fontsize=8)
    stain_text = ", ".join(f"{s}" for s in result.stains)
    fig.suptitle(f"contrast enhancement ({stain_text}; yellow shown as half red + green)\n"
                 "SSIM: similarity to the original (1 = unchanged); column titles: mean over "
                 "all compared images, under each picture: that image", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_report(result: EnhanceComparison, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``metrics.csv`` (the table), ``metrics.md`` (the table, the settings and the
    grid), ``per_image.csv`` and ``grid.png`` into ``out``, each atomically.

    Returns:
        ``{"csv": ..., "markdown": ..., "per_image": ..., "grid": ...}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "metrics.csv", "markdown": out / "metrics.md",
             "per_image": out / "per_image.csv", "grid": out / "grid.png"}
    summary = result.summary()
    with atomic_open(paths["csv"], newline="") as f:
        fields = ["method", "n", *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd")),
                  "config"]
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in summary:
            cfg = {k: _plain(v) for k, v in result.configs[row["method"]].items()}
            writer.writerow({**{k: _csv_value(v) for k, v in row.items()},
                             "config": ";".join(f"{k}={v}" for k, v in cfg.items())})
    with atomic_open(paths["per_image"], newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "method", *METRICS], lineterminator="\n")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    render_grid(result, paths["grid"])
    s = result.settings
    size = f"{s['size']}x{s['size']} px (enhanced at the original size, then resized)" \
        if s.get("size") else "original size"
    text = (
        "# Contrast enhancement: each method against the original\n\n"
        f"Data: `{s.get('data_dir')}`, {s.get('n')} images (sampled with seed "
        f"{s.get('seed')}), stains {', '.join(result.stains)}, {size}.\n"
        "Mean ± sample sd over images. MSE on the 0..255 scale; PSNR = 10 log10(255² / MSE);"
        " SSIM with an 11-tap Gaussian window (sigma 1.5), averaged over stains.\n\n"
        + summary_markdown(result)
        + "\n![original and each method](grid.png)\n"
    )
    with atomic_open(paths["markdown"]) as f:
        f.write(text)
    return paths


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    return value
