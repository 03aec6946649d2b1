"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN
Training", NeurIPS 2020): the same random, differentiable augmentation applied to real
and fake images before the discriminator, in both the D and the G step. With a few dozen
to a few hundred images per class — hpatk's usual case — it keeps D from memorising the
real set, the failure that turns samples into coloured noise.

The three ops of the paper's "color,translation,cutout" policy are a few tensor lines
each, written here as in the authors' reference code (MIT licence); each draws its
parameters per image from torch's global RNG (seeded and checkpointed by the trainer).

Shape: (B, C, H, W) float in [-1, 1] -> same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> the op names (``""`` -> none)."""
    ops = [p.strip() for p in str(policy or "").split(",") if p.strip()]
    bad = [p for p in ops if p not in POLICIES]
    if bad:
        raise ValueError(f"diffaugment: unknown op '{bad[0]}' (ops: {', '.join(POLICIES)})")
    return ops


def diff_augment(x: torch.Tensor, ops: list[str]) -> torch.Tensor:
    """Apply ``ops`` in order (see the module docstring)."""
    for op in ops:
        x = _OPS[op](x)
    return x


def _color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    rand = lambda: torch.rand(b, 1, 1, 1, dtype=x.dtype, device=x.device)  # noqa: E731
    x = x + (rand() - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand() * 2) + mean  # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    ty = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device),
                                torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device),
                                torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}
