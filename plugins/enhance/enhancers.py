"""The enhancer classes: thin modules over :mod:`hpatk.plugins.enhance.functional` (torch,
any device) and :mod:`hpatk.plugins.enhance._opencv` (OpenCV, CPU).

Cheap to import: torch, numpy and cv2 are imported inside methods.

Every enhancer works per plane: float (B, C, H, W) in [0, 1] on any device comes back in
the same shape, dtype and device; each (H, W) plane is enhanced on its own. Float input is
quantised to the 256 gray levels OpenCV sees, ``round(255 x)``, and returned as
``level / 255``; a uint8 tensor is taken as gray levels 0..255 and returned as uint8;
float input outside [0, 1] (or NaN) raises :class:`EnhanceError` (a ``ValueError``).

Backends (``device``): ``"auto"`` runs CPU tensors and ``apply_uint8`` through OpenCV
over a thread pool and tensors on a GPU through the batched torch kernels where they lie;
``"cpu"`` always uses OpenCV (GPU tensors make a round trip); ``"cuda"`` (or
``"cuda:N"``) always uses the torch kernels on that GPU. Both backends give identical
results, so ``device`` and ``threads`` are left out of :meth:`config` (and out of cache
fingerprints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpatk.core import Enhancer
from hpatk.plugins.enhance._checks import (
    EnhanceError,
    check_clip_limit,
    check_device,
    check_grid_size,
    check_threads,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["AHE", "CLAHE", "HE", "EnhanceError", "NoEnhance", "PlaneEnhancer"]


def _check_image(image: Any) -> np.ndarray:
    """A uint8 numpy (C, H, W) or (H, W) image, made C-contiguous."""
    import numpy as np

    if not isinstance(image, np.ndarray):
        raise EnhanceError(f"apply_uint8 expects a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise EnhanceError(f"apply_uint8 expects uint8, got {image.dtype}: convert explicitly")
    if image.ndim not in (2, 3):
        raise EnhanceError(f"apply_uint8 expects (C, H, W) or (H, W), got shape {image.shape}")
    return np.ascontiguousarray(image)


class PlaneEnhancer(Enhancer):
    """Base of the histogram enhancers: input checks and the choice of backend.

    Subclasses implement :meth:`_torch` (uint8 tensor -> uint8 tensor, any device) and
    :meth:`_opencv` (uint8 numpy (N, H, W) -> same).
    """

    def __init__(self, *, device: str = "auto", threads: int | None = None,
                 **params: Any) -> None:
        super().__init__(**params)
        self.device = check_device(device)
        self.threads = check_threads(threads)

    # -- backends, per subclass -----------------------------------------------------------
    def _torch(self, levels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _opencv(self, planes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------
    def _torch_device(self, current: torch.device | None) -> torch.device | None:
        """The torch device to compute on, or None for OpenCV on the CPU."""
        if self.device == "cpu" or (self.device == "auto" and (current is None
                                                                or current.type == "cpu")):
            return None  # before importing torch: cache-build workers never need it
        if self.device == "auto":
            return current
        import torch

        if not torch.cuda.is_available():
            raise EnhanceError(f"device={self.device!r} but CUDA is not available: use "
                               "device='auto' or 'cpu'")
        return torch.device(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance every (H, W) plane of ``x``.

        Args:
            x: float in [0, 1] or uint8, on any device.

        Returns:
            Same shape, dtype and device as ``x``.

        Shape:
            (B, C, H, W) -> (B, C, H, W) (any (*, H, W) works).
        """
        import torch
        from hpatk.plugins.enhance.functional import from_levels, to_levels

        levels = to_levels(x)
        if levels.numel() == 0:
            return x.clone()
        target = self._torch_device(levels.device)
        if target is None:
            planes = levels.reshape(-1, *levels.shape[-2:]).cpu().numpy()
            out = torch.from_numpy(self._opencv(planes)).view(levels.shape).to(levels.device)
        else:
            out = self._torch(levels.to(target)).to(levels.device)
        return from_levels(out, x)

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        """Enhance a decoded uint8 image (the cache builder's and ``hpatk predict``'s path).

        Args:
            image: uint8 numpy array.

        Returns:
            uint8 numpy array of the same shape.

        Shape:
            (C, H, W) -> (C, H, W), or (H, W) -> (H, W).
        """
        image = _check_image(image)
        if image.size == 0:
            return image.copy()
        target = self._torch_device(None)
        if target is None:
            return self._opencv(image.reshape(-1, *image.shape[-2:])).reshape(image.shape)
        import torch

        return self._torch(torch.from_numpy(image).to(target)).cpu().numpy()

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.params.items()]
        if self.device != "auto":
            args.append(f"device={self.device!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class NoEnhance(PlaneEnhancer):
    """The identity, for comparisons and ablations: input is checked, returned unchanged."""

    name = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from hpatk.plugins.enhance.functional import to_levels

        to_levels(x)  # same input checks as the other enhancers
        return x

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        return _check_image(image).copy()


class HE(PlaneEnhancer):
    """Global histogram equalisation of each plane, exactly ``cv2.equalizeHist``.

    Args:
        device: "auto", "cpu" (OpenCV) or "cuda" (torch); see the module doc.
        threads: OpenCV thread-pool size; None: all CPUs (1 in worker processes).

    Shape:
        (B, C, H, W) -> (B, C, H, W)

    Example:
        >>> import torch
        >>> HE()(torch.rand(2, 4, 32, 32)).shape
        torch.Size([2, 4, 32, 32])
    """

    name = "he"

    def __init__(self, *, device: str = "auto", threads: int | None = None) -> None:
        super().__init__(device=device, threads=threads)

    def _torch(self, levels: torch.Tensor) -> torch.Tensor:
        from hpatk.plugins.enhance.functional import equalize_hist_levels

        return equalize_hist_levels(levels)

    def _opencv(self, planes: np.ndarray) -> np.ndarray:
        from hpatk.plugins.enhance._opencv import equalize_hist_planes

        return equalize_hist_planes(planes, self.threads)


class CLAHE(PlaneEnhancer):
    """Contrast-limited adaptive histogram equalisation, exactly
    ``cv2.createCLAHE(clip_limit, grid_size).apply`` on each plane (the paper's choice).

    Args:
        clip_limit: OpenCV's ``clipLimit``: a tile's histogram bins are capped at
            ``max(1, int(clip_limit * tile_area / 256))`` pixels and the excess spread over
            all bins; 0 disables clipping (that is :class:`AHE`).
        grid_size: OpenCV's ``tileGridSize``: (tiles across, tiles down); an int means a
            square grid. Images the grid does not divide are padded (BORDER_REFLECT_101)
            for the tile histograms, as OpenCV does.
        device: "auto", "cpu" (OpenCV) or "cuda" (torch); see the module doc.
        threads: OpenCV thread-pool size; None: all CPUs (1 in worker processes).

    Shape:
        (B, C, H, W) -> (B, C, H, W)

    Example:
        >>> import torch
        >>> CLAHE(clip_limit=2.0, grid_size=(8, 8))(torch.rand(2, 4, 64, 64)).shape
        torch.Size([2, 4, 64, 64])
    """

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, grid_size: tuple[int, int] | int = (8, 8), *,
                 device: str = "auto", threads: int | None = None) -> None:
        super().__init__(clip_limit=check_clip_limit(clip_limit),
                         grid_size=check_grid_size(grid_size), device=device, threads=threads)

    def _torch(self, levels: torch.Tensor) -> torch.Tensor:
        from hpatk.plugins.enhance.functional import clahe_levels

        return clahe_levels(levels, self._clip_limit, self.params["grid_size"])

    def _opencv(self, planes: np.ndarray) -> np.ndarray:
        from hpatk.plugins.enhance._opencv import clahe_planes

        return clahe_planes(planes, self._clip_limit, self.params["grid_size"], self.threads)

    @property
    def _clip_limit(self) -> float:
        return self.params.get("clip_limit", 0.0)


class AHE(CLAHE):
    """Adaptive histogram equalisation: CLAHE without a clip limit.

    In OpenCV terms ``cv2.createCLAHE(clipLimit=0, tileGridSize=grid_size)``: a clip limit
    <= 0 skips the clipping step, so each tile's LUT is its plain equalised CDF,
    ``round(255 * cdf / tile_area)``, blended bilinearly between neighbouring tiles.

    Args:
        grid_size: (tiles across, tiles down), as for :class:`CLAHE`.
        device: "auto", "cpu" (OpenCV) or "cuda" (torch).
        threads: OpenCV thread-pool size; None: all CPUs (1 in worker processes).

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    name = "ahe"

    def __init__(self, grid_size: tuple[int, int] | int = (8, 8), *, device: str = "auto",
                 threads: int | None = None) -> None:
        PlaneEnhancer.__init__(self, grid_size=check_grid_size(grid_size), device=device,
                               threads=threads)
