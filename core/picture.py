"""Pictures: multi-stain images as RGB (one colour convention for every picture hpatk
draws: the enhancement report, GAN sample grids, the synthetic-data preview), and the
matplotlib set-up and atomic PNG writing every plot shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# display colour (R, G, B weights) of each stain: HPA's convention; yellow (ER) adds to
# red and green at half strength so it does not wash the other stains out. Any other
# channel name shows in gray.
STAIN_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (0.5, 0.5, 0.0),
}
_GRAY = (1 / 3, 1 / 3, 1 / 3)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 90) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file renamed when
    complete), then close it. Returns ``path``."""
    from hpatk.core.io import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def composite(images: Any, stains: Sequence[str]) -> np.ndarray:
    """An RGB picture of multi-stain images (a numpy array or a CPU/GPU tensor).

    Channels add with their :data:`STAIN_COLOURS` weights and saturate, never wrap
    around. uint8 input gives uint8 output (the sum truncated to whole gray levels);
    float input (in [0, 1]) gives float32 clipped to [0, 1].

    Args:
        images: one image or a batch.
        stains: the name of each channel, in order (``len(stains) == C``).

    Shape:
        (C, H, W) -> (H, W, 3); (B, C, H, W) -> (B, H, W, 3).
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim not in (3, 4) or x.shape[-3] != len(stains):
        raise ValueError(f"composite: {len(stains)} stains for images of shape {x.shape}")
    colours = np.asarray([STAIN_COLOURS.get(s, _GRAY) for s in stains], np.float32)
    rgb = np.tensordot(x.astype(np.float32), colours, axes=([x.ndim - 3], [0]))
    if x.dtype == np.uint8:
        return np.clip(rgb, 0, 255).astype(np.uint8)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def save_grid(images: Any, stains: Sequence[str], path: str | os.PathLike[str],
              title: str = "", cols: int | None = None) -> Path:
    """A grid of stain composites as a PNG (matplotlib, Agg), written atomically.

    Shape: images (B, C, H, W) uint8 or float in [0, 1] (numpy or tensor).
    """
    import math

    plt = pyplot()

    if len(stains) != images.shape[1]:  # unknown channels: gray
        stains = [f"c{i}" for i in range(images.shape[1])]
    rgb = composite(images, stains)
    n = len(rgb)
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(rgb[k], interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
