"""The paper's classic augmentation, batch-wise on the training device with kornia.

Verma et al. (2020, section 3.1.2) list horizontal flip, vertical flip, crop, scaling,
rotation, shear, sharpening and inversion, "each with a probability value", without the
values. The defaults below are hpatk's choice: flips are free for microscopy (no natural
orientation), geometric changes moderate, inversion rare (test images are never inverted).

=========  ====  ==========================================================================
op         p     what (parameters)
=========  ====  ==========================================================================
hflip      0.5   mirror left-right
vflip      0.5   mirror top-bottom
crop       0.3   random resized crop back to the input size (``crop_scale`` of the area
                 (0.6, 1.0), aspect ``crop_ratio`` (3/4, 4/3))
scale      0.3   zoom about the centre by a factor in ``scale_range`` (0.8, 1.2)
rotate     0.5   rotate by an angle in (-``degrees``, ``degrees``) = (-180, 180)
shear      0.2   shear along x and y, each by an angle in ``shear_degrees`` (-10, 10)
sharpen    0.2   blend with a 3x3-smoothed copy by a factor in ``sharpness`` (1.2, 2.0):
                 factors above 1 sharpen (kornia's ``RandomSharpness`` default only blurs)
invert     0.1   x -> 1 - x
=========  ====  ==========================================================================

Each op draws its own coin per image (per-sample randomness) from torch's global RNG, so
``torch.manual_seed`` makes a run reproducible. The geometric ops resample one after the
other (bilinear, zero padding: black, the background of a fluorescence image), as a chain
of independent "sometimes" augmenters (imgaug, Keras) does. An op with p = 0 is skipped.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from hpatk.core.errors import HpatkError
from torch import nn

OPS = ("hflip", "vflip", "crop", "scale", "rotate", "shear", "sharpen", "invert")


def _pair(value: float | tuple[float, float] | list[float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (value, value) if isinstance(value, (int, float)) else map(float, value)
    except (TypeError, ValueError):
        raise HpatkError(f"classic augmentation: {name} must be a number or a (min, max) "
                         f"pair, not {value!r}") from None
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise HpatkError(f"classic augmentation: {name} range ({lo}, {hi}) is reversed")
    return lo, hi


def _symmetric(value: float | tuple[float, float] | list[float], name: str) -> tuple[float, float]:
    """A number a means the range (-a, a); a pair is taken as is."""
    if isinstance(value, (int, float)):
        return -abs(float(value)), abs(float(value))
    return _pair(value, name)


def _shear(value: float | tuple[float, ...] | list[float]) -> tuple[float, float, float, float]:
    """Shear ranges (x min, x max, y min, y max) in degrees from a, (min, max) or 4 values."""
    if isinstance(value, (int, float)) or len(value) == 2:
        lo, hi = _symmetric(value, "shear_degrees")
        return lo, hi, lo, hi
    if len(value) == 4:
        x, y = _pair(value[:2], "shear_degrees x"), _pair(value[2:], "shear_degrees y")
        return (*x, *y)
    raise HpatkError(f"classic augmentation: shear_degrees must be a number or 2 or 4 numbers, "
                     f"not {value!r}")


class ClassicAugment(nn.Module):
    """Flips, crop, scale, rotation, shear, sharpening and inversion, each with its own
    probability (see the module docstring for the defaults and their reasons).

    Args:
        hflip, vflip, crop, scale, rotate, shear, sharpen, invert: probability of each op.
        crop_scale: area fraction of the crop (min, max).
        crop_ratio: aspect ratio of the crop (min, max).
        scale_range: zoom factor (min, max); > 1 zooms in.
        degrees: rotation angle range (-degrees, degrees), or a (min, max) pair.
        shear_degrees: shear angle range along x and y (-s, s), a (min, max) pair for
            both, or (x min, x max, y min, y max).
        sharpness: sharpening factor (min, max); 1 = unchanged, > 1 sharper, < 1 blurred.

    Shape:
        float (B, C, H, W) in [0, 1], any C (4 stains), any device -> same.

    Example:
        >>> aug = ClassicAugment(invert=0.0)
        >>> aug(torch.rand(8, 4, 64, 64)).shape
        torch.Size([8, 4, 64, 64])
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, crop: float = 0.3,
                 scale: float = 0.3, rotate: float = 0.5, shear: float = 0.2,
                 sharpen: float = 0.2, invert: float = 0.1,
                 crop_scale: tuple[float, float] = (0.6, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 scale_range: tuple[float, float] = (0.8, 1.2),
                 degrees: float | tuple[float, float] = 180.0,
                 shear_degrees: float | tuple[float, float] = 10.0,
                 sharpness: tuple[float, float] = (1.2, 2.0)) -> None:
        super().__init__()
        self.p = dict(hflip=hflip, vflip=vflip, crop=crop, scale=scale, rotate=rotate,
                      shear=shear, sharpen=sharpen, invert=invert)
        for op, p in self.p.items():
            if not 0.0 <= float(p) <= 1.0:
                raise HpatkError(f"classic augmentation: probability {op}={p} is not in [0, 1]")
            self.p[op] = float(p)
        self.ranges = dict(
            crop_scale=_pair(crop_scale, "crop_scale"),
            crop_ratio=_pair(crop_ratio, "crop_ratio"),
            scale_range=_pair(scale_range, "scale_range"),
            degrees=_symmetric(degrees, "degrees"),
            shear_degrees=_shear(shear_degrees),
            sharpness=_pair(sharpness, "sharpness"),
        )
        r = self.ranges
        makers = {
            "hflip": lambda p: K.RandomHorizontalFlip(p=p),
            "vflip": lambda p: K.RandomVerticalFlip(p=p),
            "scale": lambda p: K.RandomAffine(degrees=0.0, scale=r["scale_range"], p=p),
            "rotate": lambda p: K.RandomRotation(degrees=r["degrees"], p=p),
            "shear": lambda p: K.RandomShear(shear=r["shear_degrees"], p=p),
            "sharpen": lambda p: K.RandomSharpness(sharpness=r["sharpness"], p=p),
            "invert": lambda p: K.RandomInvert(max_val=1.0, p=p),
        }
        # crop needs the image size: built on the first batch of each size (self.crops)
        self.ops = nn.ModuleDict({op: make(self.p[op]) for op, make in makers.items()
                                  if self.p[op] > 0})
        self.crops = nn.ModuleDict()  # "HxW" -> RandomResizedCrop to that size

    def _crop(self, h: int, w: int) -> nn.Module:
        key = f"{h}x{w}"
        if key not in self.crops:
            self.crops[key] = K.RandomResizedCrop((h, w), scale=self.ranges["crop_scale"],
                                                  ratio=self.ranges["crop_ratio"],
                                                  p=self.p["crop"])
        return self.crops[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise HpatkError(f"classic augmentation needs float (B, C, H, W) images, got "
                             f"{tuple(x.shape)} {x.dtype}")
        for op in OPS:
            if op == "crop":
                if self.p["crop"] > 0:
                    x = self._crop(x.shape[-2], x.shape[-1])(x)
            elif op in self.ops:
                x = self.ops[op](x)
        return x

    def config(self) -> dict:
        """Probabilities and ranges: what a run records to be replayable."""
        return {"name": "classic", **self.p,
                **{k: list(v) for k, v in self.ranges.items()}}

    def extra_repr(self) -> str:
        return ", ".join(f"{op}={p}" for op, p in self.p.items())
