"""The paper's DCGAN: generator and discriminator, sized by ``image_size`` and ``width``.

Paper (Keras-GAN template): G = noise 100 -> dense -> 8x8x1024 -> 6 transposed convs
3x3 stride 2 -> 512x512, BatchNorm (Keras momentum 0.8 == torch 0.2), ReLU, tanh.
D = 6 strided 3x3 convs, BatchNorm + Dropout 0.25, LeakyReLU, dense 1 (sigmoid).
``width=64`` gives the paper's 1024 channels at 8x8; smaller widths fit a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BN_MOMENTUM = 0.2  # Keras BatchNormalization(momentum=0.8)


def _stages(image_size: int, base: int = 8) -> int:
    n = int(round(math.log2(image_size / base)))
    if base * 2**n != image_size or n < 1:
        raise ValueError(f"image_size must be 8 * 2**n with n >= 1, got {image_size}")
    return n


class Generator(nn.Module):
    """Noise (B, latent_dim) ~ N(0, 1) -> images (B, channels, S, S) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, channels: int = 4, image_size: int = 512,
                 width: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size, self.width = (
            latent_dim, channels, image_size, width)
        n = _stages(image_size)
        ch = width * 16
        self.fc = nn.Linear(latent_dim, ch * 8 * 8)
        self.ch0 = ch
        layers: list[nn.Module] = [nn.BatchNorm2d(ch, momentum=BN_MOMENTUM), nn.ReLU(True)]
        for i in range(n):
            last = i == n - 1
            out = channels if last else max(ch // 2, 8)
            layers.append(nn.ConvTranspose2d(ch, out, 3, stride=2, padding=1, output_padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out, momentum=BN_MOMENTUM), nn.ReLU(True)]
            ch = out
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.ch0, 8, 8)
        return self.net(x)


class Discriminator(nn.Module):
    """Images (B, channels, S, S) in [-1, 1] -> real/fake logit (B, 1)."""

    def __init__(self, channels: int = 4, image_size: int = 512, width: int = 64,
                 dropout: float = 0.25) -> None:
        super().__init__()
        n = _stages(image_size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, max(width // 2, 8)
        for i in range(n):
            layers.append(nn.Conv2d(ch_in, ch, 3, stride=2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(ch, momentum=BN_MOMENTUM))
            layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
            ch_in, ch = ch, min(ch * 2, width * 16)
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch_in * 8 * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class DCGAN(nn.Module):
    """A generator/discriminator pair for one class."""

    def __init__(self, latent_dim: int = 100, channels: int = 4, image_size: int = 512,
                 width: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        self.generator = Generator(latent_dim, channels, image_size, width)
        self.discriminator = Discriminator(channels, image_size, width, dropout)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images as float (n, C, S, S) in [0, 1]."""
        was = self.generator.training
        self.generator.eval()
        z = torch.randn(n, self.generator.latent_dim, generator=generator,
                        device=self.generator.fc.weight.device)
        out = self.generator(z).add(1).div(2).clamp(0, 1)
        self.generator.train(was)
        return out
