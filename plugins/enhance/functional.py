"""OpenCV-exact histogram equalisation and CLAHE as batched torch functions (any device).

``equalize_clahe`` reproduces ``cv2.createCLAHE(clipLimit, tileGridSize).apply`` bit for bit
on 8-bit data and ``equalize_hist`` reproduces ``cv2.equalizeHist``: same tile geometry
(BORDER_REFLECT_101 padding when the grid does not divide the image), same integer clip
limit and redistribution of the clipped excess, same float32 LUT scaling and bilinear
LUT interpolation, same round-half-to-even. Every image plane (the last two axes) is
processed independently, all planes of a batch at once.

Why not ``kornia.enhance.equalize_clahe``: it blends LUTs half a pixel off OpenCV's phase,
tiles differently when the grid divides only one axis, does not quantise to 8 bit and
takes uint8 / 0..255 input as if it were [0, 1], so it cannot reproduce OpenCV's results.

Input convention (both functions): float in [0, 1] is quantised to the 256 gray levels
OpenCV would see, ``round(x * 255)``, and the result comes back as float ``level / 255``
in the input's dtype; uint8 input is taken as gray levels 0..255 and comes back as uint8.
Float input outside [0, 1] (or NaN) is refused. The outputs carry no gradient: the
operations are piecewise constant in the input.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from hpatk.plugins.enhance._checks import EnhanceError, check_clip_limit, check_grid_size

__all__ = [
    "clahe_clip_limit",
    "clahe_levels",
    "equalize_clahe",
    "equalize_hist",
    "equalize_hist_levels",
    "from_levels",
    "to_levels",
]

HIST_SIZE = 256
# Planes are processed in chunks of at most this many pixels: bounds the temporaries
# (~30 bytes per pixel). On a CPU, small chunks keep the buffers cache- and allocator-
# friendly (3x faster than one huge batch); a GPU wants big ones (fewer kernel launches).
_CHUNK_PIXELS = {"cpu": 1 << 20}
_CHUNK_PIXELS_DEFAULT = 1 << 24


# -- input conversion -------------------------------------------------------------------
def to_levels(input: torch.Tensor) -> torch.Tensor:
    """Gray levels 0..255 of an image tensor: uint8 as is, float in [0, 1] as ``round(255 x)``.

    Args:
        input: uint8, or float with values in [0, 1]; at least 2 dimensions (..., H, W).

    Returns:
        uint8 tensor of the same shape, on the same device.

    Raises:
        EnhanceError: a non-tensor, fewer than 2 dimensions, another dtype, or float values
            outside [0, 1] (including NaN).

    Shape:
        (*, H, W) -> (*, H, W)
    """
    if not isinstance(input, torch.Tensor):
        raise EnhanceError(f"expected a torch.Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise EnhanceError(f"expected an image tensor (..., H, W), got shape {tuple(input.shape)}")
    if input.dtype == torch.uint8:
        return input
    if not input.is_floating_point():
        raise EnhanceError(f"expected float values in [0, 1] or uint8, got dtype {input.dtype}")
    if input.numel():
        lo, hi = torch.aminmax(input.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= 0.0 and hi <= 1.0):  # NaN fails both comparisons
            raise EnhanceError(
                f"float input must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]: divide "
                "0..255 data by 255 or pass a uint8 tensor")
    x = input.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # 255 x needs more mantissa than half precision has
    return x.mul(255).round_().to(torch.uint8)


def from_levels(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gray levels back to the convention of ``like``: uint8 as is, float ``levels / 255``.

    Shape:
        (*, H, W) -> (*, H, W)
    """
    if like.dtype == torch.uint8:
        return levels
    return levels.to(like.dtype).div_(255)


def _planes(levels: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> contiguous (N, H, W)."""
    return levels.reshape(-1, *levels.shape[-2:]).contiguous()


def _chunks(n: int, pixels: int, bins: int, device: torch.device) -> list[slice]:
    """Slices of planes holding at most ``_CHUNK_PIXELS`` pixels and 2**30 histogram bins."""
    limit = _CHUNK_PIXELS.get(device.type, _CHUNK_PIXELS_DEFAULT)
    step = max(1, min(limit // max(1, pixels), 2**30 // max(1, bins)))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _index_dtype(nbins: int) -> torch.dtype:
    # int32 index arithmetic, gathers and bincount run several times faster than int64
    return torch.int32 if nbins < 2**31 else torch.int64


def _histograms(levels: torch.Tensor, key: torch.Tensor, nbins: int) -> torch.Tensor:
    """All histograms at once: ``bincount`` of ``level + key`` (key: each pixel's first bin)."""
    return torch.bincount((levels.to(key.dtype) + key).reshape(-1), minlength=nbins)


# -- global histogram equalisation ------------------------------------------------------
def equalize_hist_levels(levels: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist`` on every plane of a uint8 tensor (batched, any device).

    OpenCV maps the lowest occurring level to 0 and level ``i`` above it to
    ``round(255 * (cdf[i] - cdf[lowest]) / (pixels - count[lowest]))`` in float32; a constant
    plane is returned unchanged.

    Args:
        levels: uint8 gray levels.

    Returns:
        uint8 tensor, same shape and device.

    Shape:
        (*, H, W) -> (*, H, W)
    """
    if levels.dtype != torch.uint8:
        raise EnhanceError(f"equalize_hist_levels expects uint8, got {levels.dtype}")
    planes = _planes(levels)
    n, h, w = planes.shape
    out = torch.empty_like(planes)
    if planes.numel() == 0:
        return out.reshape(levels.shape)
    dev = planes.device
    for sl in _chunks(n, h * w, HIST_SIZE, planes.device):
        p = planes[sl]
        m = p.shape[0]
        itype = _index_dtype(m * HIST_SIZE)
        key = (torch.arange(m, device=dev, dtype=itype) * HIST_SIZE).view(m, 1, 1)
        hist = _histograms(p, key, m * HIST_SIZE).view(m, HIST_SIZE)
        cdf = hist.cumsum(-1)
        first = (hist > 0).to(torch.uint8).argmax(-1, keepdim=True)  # lowest occurring level
        count0 = hist.gather(-1, first)
        total = h * w
        # float32 as OpenCV: scale = 255.f / (total - count0), lut = sat(round(sum * scale))
        denom = (total - count0).clamp_(min=1).to(torch.float32)
        scale = torch.tensor(np.float32(HIST_SIZE - 1), device=dev) / denom
        lut = ((cdf - count0).to(torch.float32) * scale).round_().clamp_(0, 255)
        lut = torch.where(count0 == total, first.to(torch.float32), lut).to(torch.uint8)
        flat_idx = (p.to(itype) + key).reshape(-1)
        out[sl] = lut.reshape(-1).index_select(0, flat_idx).view(m, h, w)
    return out.reshape(levels.shape)


def equalize_hist(input: torch.Tensor) -> torch.Tensor:
    """Global histogram equalisation of each plane, exactly as ``cv2.equalizeHist``.

    Args:
        input: float in [0, 1] (quantised to 256 levels) or uint8 (gray levels).

    Returns:
        Same shape, dtype and device as ``input``.

    Shape:
        (*, H, W) -> (*, H, W), e.g. (B, C, H, W).

    Example:
        >>> x = torch.rand(2, 4, 32, 32)
        >>> equalize_hist(x).shape
        torch.Size([2, 4, 32, 32])
    """
    return from_levels(equalize_hist_levels(to_levels(input)), input)


# -- CLAHE ------------------------------------------------------------------------------
def clahe_clip_limit(clip_limit: float, tile_area: int) -> int:
    """OpenCV's integer clip limit: ``max(1, int(clipLimit * tileArea / 256))``; 0 = off."""
    if clip_limit <= 0:
        return 0
    return max(int(clip_limit * tile_area / HIST_SIZE), 1)


def _clahe_geometry(h: int, w: int, gx: int, gy: int) -> tuple[int, int, int, int]:
    """(pad_h, pad_w, tile_h, tile_w) exactly as ``CLAHE_Impl::apply``.

    OpenCV pads both axes, by ``tiles - size % tiles``, as soon as either is not divisible,
    so a divisible axis then gets a whole extra tile's worth of rows (reproduced on purpose).
    """
    if h % gy == 0 and w % gx == 0:
        return 0, 0, h // gy, w // gx
    pad_h, pad_w = gy - h % gy, gx - w % gx
    return pad_h, pad_w, (h + pad_h) // gy, (w + pad_w) // gx


def _reflect101(n: int, pad: int) -> np.ndarray:
    """Source indices of an axis of length ``n`` extended by ``pad`` at its end with
    BORDER_REFLECT_101 (``cv2.borderInterpolate``; works for any ``pad``, even > n)."""
    idx = np.arange(n + pad)
    if n == 1:
        return np.zeros_like(idx)
    idx = idx % (2 * (n - 1))
    return np.where(idx < n, idx, 2 * (n - 1) - idx)


def _axis_blend(n: int, tile: int, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-coordinate blend cell and weights along one axis, in OpenCV's float32 order:
    ``t = i * (1.f / tile) - 0.5f``, ``t1 = floor(t)``, ``a = t - t1``, ``a1 = 1.f - a``.

    The cell ``t1 + 1`` (0..tiles) names the pair of neighbouring tiles
    ``(max(t1, 0), min(t1 + 1, tiles - 1))`` whose LUTs are blended.
    """
    f32 = np.float32
    t = np.arange(n, dtype=f32) * (f32(1.0) / f32(tile)) - f32(0.5)
    t1 = np.floor(t)
    a = (t - t1).astype(f32)
    a1 = (f32(1.0) - a).astype(f32)
    cell = np.clip(t1.astype(np.int64) + 1, 0, tiles)
    return cell, a, a1


@functools.lru_cache(maxsize=16)
def _blend_tables(h: int, w: int, th: int, tw: int, gy: int, gx: int, device: str
                  ) -> tuple[torch.Tensor, ...]:
    """Per-pixel cell offsets (H, W) and the weights along y (1, H, 1) and x (1, 1, W),
    cached per geometry and device (they are the same for every image of a size)."""
    cy, ya, ya1 = _axis_blend(h, th, gy)
    cx, xa, xa1 = _axis_blend(w, tw, gx)
    offsets = ((cy[:, None] * (gx + 1) + cx[None, :]) * HIST_SIZE).astype(np.int32)
    dev = torch.device(device)
    t = torch.as_tensor
    return (t(offsets, device=dev), t(ya, device=dev).view(1, h, 1),
            t(ya1, device=dev).view(1, h, 1), t(xa, device=dev).view(1, 1, w),
            t(xa1, device=dev).view(1, 1, w))


def _cell_luts(luts: torch.Tensor) -> torch.Tensor:
    """The 4 LUTs each blend cell mixes, packed as 4 bytes per level: (N, gy+1, gx+1, 256)
    int32 holding (top-left, top-right, bottom-left, bottom-right) uint8 entries, so that
    one 4-byte gather per pixel fetches all four."""
    _, gy, gx, _ = luts.shape
    dev = luts.device
    r1 = torch.arange(gy + 1, device=dev).sub_(1).clamp_(min=0)
    r2 = torch.arange(gy + 1, device=dev).clamp_(max=gy - 1)
    c1 = torch.arange(gx + 1, device=dev).sub_(1).clamp_(min=0)
    c2 = torch.arange(gx + 1, device=dev).clamp_(max=gx - 1)
    top, bottom = luts[:, r1], luts[:, r2]
    corners = (top[:, :, c1], top[:, :, c2], bottom[:, :, c1], bottom[:, :, c2])
    return torch.stack(corners, dim=-1).contiguous().view(torch.int32).squeeze(-1)


def _tile_luts(padded: torch.Tensor, gx: int, gy: int, clip: int) -> torch.Tensor:
    """Clipped-histogram LUTs of every tile (``CLAHE_CalcLut_Body``), uint8 (N, gy, gx, 256)."""
    n, hp, wp = padded.shape
    th, tw = hp // gy, wp // gx
    dev = padded.device
    tiles = n * gy * gx
    itype = _index_dtype(tiles * HIST_SIZE)
    key = (torch.arange(tiles, device=dev, dtype=itype) * HIST_SIZE).view(n, gy, 1, gx, 1)
    hist = _histograms(padded.view(n, gy, th, gx, tw), key, tiles * HIST_SIZE)
    hist = hist.view(n, gy, gx, HIST_SIZE)
    if clip > 0:
        clipped = (hist - clip).clamp_(min=0).sum(-1, keepdim=True)
        hist = hist.clamp_(max=clip)
        batch = clipped // HIST_SIZE  # redistBatch: spread evenly over all bins
        residual = clipped - batch * HIST_SIZE
        hist += batch
        # the remaining `residual` pixels go one each to bins 0, step, 2 step, ...
        step = (HIST_SIZE // residual.clamp(min=1)).clamp_(min=1)
        bins = torch.arange(HIST_SIZE, device=dev, dtype=torch.int64)
        hist += ((bins % step == 0) & (bins // step < residual)).to(hist.dtype)
    # lutScale = 255.f / tileArea in float32; LUT = saturate(round(cdf * lutScale))
    scale = torch.tensor(np.float32(HIST_SIZE - 1) / np.float32(th * tw), device=dev)
    lut = (hist.cumsum(-1).to(torch.float32) * scale).round_().clamp_(0, 255)
    return lut.to(torch.uint8)


def _interpolate(planes: torch.Tensor, luts: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Bilinear blend of the 4 neighbouring tile LUTs (``CLAHE_Interpolation_Body``)."""
    n, h, w = planes.shape
    _, gy, gx, _ = luts.shape
    cells = _cell_luts(luts)
    offsets, ya, ya1, xa, xa1 = _blend_tables(h, w, th, tw, gy, gx, str(planes.device))
    itype = _index_dtype(cells.numel())
    key = torch.arange(n, device=planes.device, dtype=itype).view(n, 1, 1) * cells[0].numel()
    idx = planes.to(itype).add_(key).add_(offsets)
    packed = cells.reshape(-1).index_select(0, idx.view(-1))
    # de-interleave the 4 bytes into 4 contiguous float32 planes, then work in place:
    # one buffer, contiguous (vectorised) arithmetic
    corners = torch.empty((4, n, h, w), dtype=torch.float32, device=planes.device)
    corners.view(4, -1).copy_(packed.view(torch.uint8).view(-1, 4).t())
    l11, l12, l21, l22 = corners.unbind(0)
    # res = (L11 * xa1 + L12 * xa) * ya1 + (L21 * xa1 + L22 * xa) * ya, one float32 op at a
    # time in OpenCV's order (separate kernels: no fused multiply-add changes a rounding).
    top = l11.mul_(xa1).add_(l12.mul_(xa)).mul_(ya1)
    bottom = l21.mul_(xa1).add_(l22.mul_(xa)).mul_(ya)
    return top.add_(bottom).round_().clamp_(0, 255).to(torch.uint8)


def clahe_levels(levels: torch.Tensor, clip_limit: float = 2.0,
                 grid_size: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """``cv2.createCLAHE(clip_limit, grid_size).apply`` on every plane of a uint8 tensor.

    Args:
        levels: uint8 gray levels.
        clip_limit: OpenCV's ``clipLimit``; 0 disables clipping (adaptive HE).
        grid_size: OpenCV's ``tileGridSize`` order: (tiles across, tiles down).

    Returns:
        uint8 tensor, same shape and device.

    Shape:
        (*, H, W) -> (*, H, W)
    """
    if levels.dtype != torch.uint8:
        raise EnhanceError(f"clahe_levels expects uint8, got {levels.dtype}")
    clip_limit = check_clip_limit(clip_limit)
    gx, gy = check_grid_size(grid_size)
    planes = _planes(levels)
    n, h, w = planes.shape
    out = torch.empty_like(planes)
    if planes.numel() == 0:
        return out.reshape(levels.shape)
    pad_h, pad_w, th, tw = _clahe_geometry(h, w, gx, gy)
    clip = clahe_clip_limit(clip_limit, th * tw)
    rows = cols = None
    if pad_h or pad_w:
        rows = torch.as_tensor(_reflect101(h, pad_h), device=planes.device)
        cols = torch.as_tensor(_reflect101(w, pad_w), device=planes.device)
    for sl in _chunks(n, (h + pad_h) * (w + pad_w), gx * gy * HIST_SIZE, planes.device):
        p = planes[sl]
        padded = p if rows is None else p[:, rows][:, :, cols].contiguous()
        luts = _tile_luts(padded, gx, gy, clip)
        out[sl] = _interpolate(p, luts, th, tw)
    return out.reshape(levels.shape)


def equalize_clahe(input: torch.Tensor, clip_limit: float = 2.0,
                   grid_size: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation, exactly as OpenCV's CLAHE.

    Args:
        input: float in [0, 1] (quantised to 256 levels) or uint8 (gray levels).
        clip_limit: OpenCV's ``clipLimit`` (contrast limit relative to a flat histogram);
            0 disables clipping, which gives plain adaptive histogram equalisation.
        grid_size: OpenCV's ``tileGridSize``: (tiles across, tiles down). Note that
            kornia's ``grid_size`` is the other way round, (tiles down, tiles across).

    Returns:
        Same shape, dtype and device as ``input``.

    Shape:
        (*, H, W) -> (*, H, W), e.g. (B, C, H, W); every plane on its own.

    Example:
        >>> x = torch.rand(2, 4, 64, 60)
        >>> equalize_clahe(x, 2.0, (8, 8)).shape
        torch.Size([2, 4, 64, 60])
    """
    return from_levels(clahe_levels(to_levels(input), clip_limit, grid_size), input)
