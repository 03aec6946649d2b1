"""Parameter and input checks shared by the enhancers (no torch here: imported cheaply)."""

from __future__ import annotations

import math
from typing import Any

from hpatk.core.errors import HpatkError

DEVICES = ("auto", "cpu", "cuda")


class EnhanceError(HpatkError, ValueError):
    """A bad enhancer parameter or input: one line naming it (also a ``ValueError``)."""


def check_clip_limit(value: Any) -> float:
    """``clip_limit`` as OpenCV's ``clipLimit``: a finite number >= 0 (0 disables clipping)."""
    try:
        clip = float(value)
    except (TypeError, ValueError):
        raise EnhanceError(f"clip_limit must be a number >= 0, got {value!r}") from None
    if not math.isfinite(clip) or clip < 0:
        raise EnhanceError(f"clip_limit must be a finite number >= 0, got {value!r}")
    return clip


def check_grid_size(value: Any) -> tuple[int, int]:
    """``grid_size`` as OpenCV's ``tileGridSize``: (tiles across, tiles down), each >= 1.

    A single int means a square grid; lists (from YAML/JSON configs) become tuples.
    """
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        gx, gy = (int(v) for v in items)
        ok = not isinstance(items, (str, bytes)) and all(
            not isinstance(v, bool) and float(v) == int(v) for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok or gx < 1 or gy < 1:
        raise EnhanceError(
            f"grid_size must be two positive integers (tiles across, tiles down), got {value!r}")
    return gx, gy


def check_device(value: Any) -> str:
    """``device``: 'auto' (the input's device), 'cpu' (OpenCV) or 'cuda' (torch on the GPU)."""
    name = str(value).lower()
    if name.startswith("cuda:"):
        return name
    if name not in DEVICES:
        raise EnhanceError(f"device must be one of {', '.join(DEVICES)}, got {value!r}")
    return name


def check_threads(value: Any) -> int | None:
    """``threads``: None (automatic) or a positive int."""
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise EnhanceError(f"threads must be a positive integer or None, got {value!r}")
    return n
