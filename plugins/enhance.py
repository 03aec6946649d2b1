"""Built-in contrast enhancers: ``none``, ``he``, ``ahe``, ``clahe``.

Shape: float (B, C, H, W) in [0, 1] -> same, per channel. torch/cv2 load lazily.
(Minimal version; the enhancement issue makes CLAHE match OpenCV on every device.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpatk.core import Enhancer, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import torch


class NoEnhance(Enhancer):
    name = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        return image


class CLAHE(Enhancer):
    """Contrast-limited adaptive histogram equalisation (OpenCV semantics)."""

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, grid_size: tuple[int, int] = (8, 8)) -> None:
        super().__init__(clip_limit=float(clip_limit), grid_size=tuple(grid_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import kornia

        return kornia.enhance.equalize_clahe(x, self.params["clip_limit"],
                                             self.params["grid_size"])

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        import cv2
        import numpy as np

        clahe = cv2.createCLAHE(self.params["clip_limit"], self.params["grid_size"])
        return np.stack([clahe.apply(np.ascontiguousarray(c)) for c in image])


class AHE(CLAHE):
    name = "ahe"

    def __init__(self, grid_size: tuple[int, int] = (8, 8)) -> None:
        Enhancer.__init__(self, clip_limit=0.0, grid_size=tuple(grid_size))


class HE(Enhancer):
    name = "he"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import kornia

        return kornia.enhance.equalize(x)

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        import cv2
        import numpy as np

        return np.stack([cv2.equalizeHist(np.ascontiguousarray(c)) for c in image])


def _factory(cls: type[Enhancer]):
    def make(**params: Any) -> Enhancer:
        return cls(**params)

    return make


@hookimpl
def hpatk_register_enhancers(register):
    register("none", _factory(NoEnhance), aliases=("identity",), description="no enhancement")
    register("he", _factory(HE), description="global histogram equalisation")
    register("ahe", _factory(AHE), description="adaptive HE (CLAHE without a clip limit)")
    register("clahe", _factory(CLAHE), description="CLAHE, OpenCV semantics (the paper's)")
