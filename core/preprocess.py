"""The one preprocessing function: enhance at the original size, then resize.

The HDF5 cache (``hpatk cache build``) and inference (``hpatk predict``) both call
:func:`preprocess`, so a cached image and an image seen at inference agree bit for bit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hpatk.core.base import Enhancer
from hpatk.core.errors import HpatkError

if TYPE_CHECKING:
    import numpy as np


def make_enhancer(enhance: str | Mapping[str, Any] | Enhancer | None,
                  params: Mapping[str, Any] | None = None) -> Enhancer | None:
    """An enhancer from a registry name (+ params), a ``config()`` dict, or an instance.

    ``make_enhancer(meta["enhance"])`` rebuilds the enhancer a cache or a checkpoint
    recorded (``{"name": "clahe", "clip_limit": 2.0, "grid_size": [8, 8]}``).

    Raises:
        HpatkError: unknown enhancer (with close matches) or parameters it does not take.
    """
    if enhance is None or isinstance(enhance, Enhancer):
        return enhance
    if isinstance(enhance, Mapping):
        cfg = dict(enhance)
        name = cfg.pop("name", None)
        if not isinstance(name, str):
            raise HpatkError(f"enhancement config {dict(enhance)!r} has no 'name'")
        params = {**cfg, **(params or {})}
    else:
        name = str(enhance)
    from hpatk.core.registry import get_registry

    try:
        return get_registry().enhancers.create(name, **dict(params or {}))
    except TypeError as exc:  # the factory rejected a keyword: name the option
        raise HpatkError(f"enhancer '{name}' does not accept parameters "
                         f"{sorted(dict(params or {}))}: {exc}") from exc


def preprocess(image: np.ndarray, enhancer: Enhancer | None, size: int | None) -> np.ndarray:
    """Enhance one image at its original size, then resize it with ``cv2.INTER_AREA``.

    Enhancement runs before resizing because CLAHE's tiles and clip limit are defined on
    the original pixels (the paper enhances the 512 px images, then trains smaller).

    Args:
        image: uint8 stains of one sample.
        enhancer: from :func:`make_enhancer` (its ``apply_uint8`` CPU path) or ``None``.
        size: output side in pixels; ``None`` keeps the input size.

    Returns:
        A C-contiguous uint8 array.

    Shape:
        (C, H, W) -> (C, size, size)

    Raises:
        HpatkError: not a uint8 (C, H, W) image, or an enhancer that changed its shape.
    """
    import cv2
    import numpy as np

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise HpatkError(f"preprocess expects a uint8 (C, H, W) image, got {got}")
    if enhancer is not None:
        out = enhancer.apply_uint8(image)
        if (not isinstance(out, np.ndarray) or out.dtype != np.uint8
                or out.shape != image.shape):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out)
            raise HpatkError(f"enhancer {enhancer!r} returned {got} from apply_uint8; "
                             f"expected uint8 {image.shape}")
        image = out
    if size is None or image.shape[1:] == (size, size):
        return np.ascontiguousarray(image)
    if size < 1:
        raise HpatkError(f"size must be a positive number of pixels, not {size}")
    # Plane by plane: no CHW <-> HWC transposes, and any number of stains.
    return np.stack([cv2.resize(np.ascontiguousarray(c), (size, size),
                                interpolation=cv2.INTER_AREA) for c in image])


# ------------------------------------------------- cache-building workers (no torch here:
# a spawned worker imports only this module, data and the enhancer, in ~0.3 s)
_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """A spawned worker whose parent was SIGKILLed would wait on its queue forever."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def init_worker(enhance: str, params: Mapping[str, Any], stains: Sequence[str], size: int,
                parent: int | None, plugin_dirs: Sequence[str] | None = None) -> None:
    """Set up this process to run :func:`preprocess_refs` (a pool initializer).

    ``parent``: exit when that process dies (None: this is the parent itself).
    ``plugin_dirs``: the parent's plugin folders (``--plugins-dir``), for the enhancer.
    """
    import cv2

    if plugin_dirs is not None:
        from hpatk.core.registry import set_plugin_dirs

        set_plugin_dirs(plugin_dirs)

    if parent is not None:
        os.environ["OMP_NUM_THREADS"] = "1"  # an enhancer on the torch path: one thread
    # No OpenCV thread pool: processes give the parallelism, and a live pool in a parent
    # deadlocks fork-started DataLoader workers later (MEASURED.md).
    cv2.setNumThreads(0)
    _WORKER.update(enhancer=make_enhancer(enhance, params), stains=tuple(stains),
                   size=int(size))
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def preprocess_refs(refs: Sequence[Any]) -> np.ndarray:
    """Load and :func:`preprocess` samples (``hpatk.core.data.SampleRef``) with the
    settings of :func:`init_worker`.

    Shape:
        (k, C, size, size) uint8
    """
    import numpy as np
    from hpatk.core.data import load_stains

    w = _WORKER
    return np.stack([preprocess(load_stains(r, w["stains"]), w["enhancer"], w["size"])
                     for r in refs])
