"""Test-time augmentation: which views of a batch are averaged. One definition for ONNX
Runtime inference (``hpatk predict``, ``hpatk serve``) and PyTorch evaluation
(``hpatk evaluate``); both average the sigmoid probabilities of the views. No torch here.
"""

from __future__ import annotations

from hpatk.core.errors import HpatkError

TTA = ("none", "flips")
# the axes each view flips, of (..., H, W): identity, horizontal, vertical, both
FLIP_AXES: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def tta_axes(tta: str) -> tuple[tuple[int, ...], ...]:
    """The flipped axes of each view of ``tta`` (``()``: the image as it is).

    Raises:
        HpatkError: an unknown ``tta``.
    """
    if tta not in TTA:
        raise HpatkError(f"--tta must be one of {', '.join(TTA)}, not '{tta}'")
    return ((),) if tta == "none" else FLIP_AXES
