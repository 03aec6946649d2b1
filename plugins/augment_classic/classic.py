"""The paper's classic augmentation, batch-wise with kornia.augmentation."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class ClassicAugment(nn.Module):
    """Each operation applied with its own probability.

    Shape: float (B, C, H, W) in [0, 1] -> same.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, affine: float = 0.5,
                 crop: float = 0.3, invert: float = 0.0, sharpen: float = 0.2,
                 degrees: float = 90.0, scale: tuple[float, float] = (0.9, 1.1),
                 shear: float = 10.0) -> None:
        super().__init__()
        self.ops = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip),
            K.RandomVerticalFlip(p=vflip),
            K.RandomAffine(degrees=degrees, scale=scale, shear=shear, p=affine),
            K.RandomSharpness(sharpness=0.5, p=sharpen),
            K.RandomInvert(p=invert),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)
