"""Built-in contrast enhancers: ``none``, ``he``, ``ahe``, ``clahe`` (the paper's first step).

``clahe`` and ``he`` reproduce ``cv2.createCLAHE(clip, grid).apply`` and
``cv2.equalizeHist`` bit for bit on 8-bit data, on the CPU (OpenCV over a thread pool)
and on a GPU (batched torch kernels, :mod:`hpatk.plugins.enhance.functional`); ``ahe``
is CLAHE with OpenCV's clip limit 0 (no clipping). Shape: float (B, C, H, W) in [0, 1]
-> same, per plane; see :mod:`hpatk.plugins.enhance.enhancers` for the input rules.

This hook module stays cheap to import: torch and cv2 load inside the enhancers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpatk.core import hookimpl
from hpatk.plugins.enhance._checks import EnhanceError
from hpatk.plugins.enhance.enhancers import AHE, CLAHE, HE, NoEnhance

__all__ = ["AHE", "CLAHE", "HE", "EnhanceError", "NoEnhance", "hpatk_register_enhancers"]


@hookimpl
def hpatk_register_enhancers(register: Callable[..., Any]) -> None:
    register("none", NoEnhance, aliases=("identity",), description="no enhancement")
    register("he", HE, description="global histogram equalisation (= cv2.equalizeHist)")
    register("ahe", AHE, description="adaptive HE: CLAHE without a clip limit (grid_size)")
    register("clahe", CLAHE,
             description="CLAHE (clip_limit, grid_size) = cv2.createCLAHE, the paper's choice")
