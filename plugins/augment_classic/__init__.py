"""Built-in classic augmentation ``classic``: flips, crop, scale, rotation, shear,
sharpen, invert, each with its own probability, batch-wise on the training device."""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _classic(**params: Any) -> Any:
    from hpatk.plugins.augment_classic.classic import ClassicAugment

    return ClassicAugment(**params)


@hookimpl
def hpatk_register_augmentations(register):
    register("classic", _classic,
             description="the paper's classic augmentation (kornia, batch-wise, per-op p)")
