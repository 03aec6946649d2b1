"""The paper's DCGAN: generator and discriminator, sized by ``image_size`` and ``width``.

Paper (Verma et al. 2020, the Keras-GAN DCGAN template): G = noise 100 ~ N(0, 1) ->
dense -> 8x8x1024 -> 6 transposed convs 3x3 stride 2 -> 512x512, BatchNorm (Keras
momentum 0.8 == torch 0.2), ReLU, tanh. D = 6 strided 3x3 convs, BatchNorm + Dropout
0.25, LeakyReLU, dense 1 (sigmoid; here a logit for ``BCEWithLogitsLoss``).

``width`` scales every layer: the 8x8 stage has ``16 * width`` channels, halving at each
upsampling (at least 8), so ``width=64`` at 512 px is the paper's 1024 -> 32 channels.
The discriminator mirrors the generator (at each resolution the same channel count, as
in Radford et al.), which at 512 px is the Keras template's 32 -> 1024. Weights start as
in Keras (Glorot-uniform, zero bias; BatchNorm epsilon 1e-3).

Example:
    >>> gan = DCGAN(channels=4, image_size=64, width=4)
    >>> gan.generator(torch.randn(2, 100)).shape
    torch.Size([2, 4, 64, 64])
    >>> gan.discriminator(torch.zeros(2, 4, 64, 64)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

BN_MOMENTUM = 0.2  # Keras BatchNormalization(momentum=0.8): running = 0.8 * running + 0.2 * batch
BN_EPS = 1e-3  # Keras' default epsilon
LATENT_DIM = 100
BASE = 8  # the dense layer reshapes to BASE x BASE


def num_stages(image_size: int) -> int:
    """The number of stride-2 (transposed) convolutions between 8x8 and ``image_size``.

    Raises:
        ValueError: unless ``image_size == 8 * 2**n`` with ``n >= 1``.
    """
    n = int(round(math.log2(max(image_size, 1) / BASE)))
    if n < 1 or BASE * 2**n != image_size:
        raise ValueError(f"image_size must be 8 * 2**n (16, 32, 64, ..., 512), got {image_size}")
    return n


def stage_channels(image_size: int, width: int) -> list[int]:
    """Channels of the generator at 8x8, 16x16, ... up to ``image_size / 2``.

    The discriminator uses the same list reversed (mirrored resolutions).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return [max((16 * width) >> i, 8) for i in range(num_stages(image_size))]


def _keras_init(module: nn.Module) -> None:
    # Keras' defaults (glorot_uniform, zeros): what the paper's models started from.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Noise ``z`` -> images in [-1, 1].

    Args:
        latent_dim: length of the noise vector (the paper: 100).
        channels: image channels, one per stain.
        image_size: output side, ``8 * 2**n``.
        width: channel multiplier; 16 * width channels at 8x8 (64 = the paper).

    Shape:
        - Input: (B, latent_dim), z ~ N(0, 1)
        - Output: (B, channels, image_size, image_size), tanh range [-1, 1]
    """

    def __init__(self, latent_dim: int = LATENT_DIM, channels: int = 4, image_size: int = 512,
                 width: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size, self.width = (
            int(latent_dim), int(channels), int(image_size), int(width))
        chans = stage_channels(self.image_size, self.width)
        self.ch0 = chans[0]
        self.fc = nn.Linear(self.latent_dim, self.ch0 * BASE * BASE)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.ch0, eps=BN_EPS, momentum=BN_MOMENTUM),
                                   nn.ReLU(inplace=True)]
        for i, ch in enumerate(chans):
            last = i == len(chans) - 1
            out = self.channels if last else chans[i + 1]
            # 3x3 stride 2, 'same'-style: exactly doubles H and W (Keras Conv2DTranspose).
            layers.append(nn.ConvTranspose2d(ch, out, 3, stride=2, padding=1, output_padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM),
                           nn.ReLU(inplace=True)]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.apply(_keras_init)

    def config(self) -> dict[str, int]:
        """The constructor arguments (= a generator checkpoint's ``model`` dict)."""
        return {"latent_dim": self.latent_dim, "channels": self.channels,
                "image_size": self.image_size, "width": self.width}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.ch0, BASE, BASE)
        return self.net(x)


class Discriminator(nn.Module):
    """Images in [-1, 1] -> one real/fake logit each.

    Args:
        channels: image channels.
        image_size: input side, ``8 * 2**n``.
        width: channel multiplier (mirrors :class:`Generator`).
        dropout: dropout after every convolution (the paper: 0.25).
        spectral_norm: spectral normalisation of every weight (Miyato et al. 2018)
            instead of BatchNorm: a Lipschitz-bounded D that trains stably on few
            images (not in the paper; off by default).

    Shape:
        - Input: (B, channels, image_size, image_size)
        - Output: (B, 1) logits (sigmoid = probability of "real")
    """

    def __init__(self, channels: int = 4, image_size: int = 512, width: int = 64,
                 dropout: float = 0.25, spectral_norm: bool = False) -> None:
        super().__init__()
        chans = stage_channels(int(image_size), int(width))[::-1]
        layers: list[nn.Module] = []
        ch_in = int(channels)
        for i, ch in enumerate(chans):
            layers.append(nn.Conv2d(ch_in, ch, 3, stride=2, padding=1))
            if i > 0 and not spectral_norm:  # none on the first (Keras template, Radford)
                layers.append(nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM))
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            ch_in = ch
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch_in * BASE * BASE, 1)
        self.apply(_keras_init)
        if spectral_norm:
            sn = nn.utils.parametrizations.spectral_norm
            for m in [*self.net, self.fc]:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    sn(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 in [0, 255] (the inverse of :func:`from_uint8`).

    Shape: (B, C, H, W) -> same, dtype uint8, on the same device.
    """
    return images.detach().add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def from_uint8(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], the generator's range. Shape: (B, C, H, W) -> same."""
    return images.to(dtype).div(127.5).sub(1)


class DCGAN(nn.Module):
    """One class's GAN: ``.generator``, ``.discriminator``, ``.sample(n)``.

    Trained by :func:`~hpatk.plugins.augment_gan.trainer.train_gan`; wrapped as a
    synthesizer by :class:`~hpatk.plugins.augment_gan.synthesizer.DCGANSynthesizer`.

    Args:
        latent_dim: noise length (100).
        channels: stains.
        image_size: side of the generated images, ``8 * 2**n``.
        width: channel multiplier (64 = the paper; 4-16 train on a CPU).
        dropout: the discriminator's dropout.

    Example:
        >>> gan = DCGAN(image_size=32, width=4)
        >>> gan.sample(8).shape                                 # float in [0, 1]
        torch.Size([8, 4, 32, 32])
    """

    def __init__(self, latent_dim: int = LATENT_DIM, channels: int = 4, image_size: int = 512,
                 width: int = 64, dropout: float = 0.25, spectral_norm: bool = False) -> None:
        super().__init__()
        self.generator = Generator(latent_dim, channels, image_size, width)
        self.discriminator = Discriminator(channels, image_size, width, dropout,
                                           spectral_norm)
        self.dropout = float(dropout)

    def config(self) -> dict[str, int]:
        """The generator's constructor arguments (a checkpoint's ``model`` dict)."""
        return self.generator.config()

    def batches(self, n: int, *, seed: int | None = None,
                batch_size: int = 64) -> Iterator[torch.Tensor]:
        """``n`` generated images in batches, in [-1, 1], the generator in eval mode
        (BatchNorm running statistics, as Keras' ``predict``). The noise is drawn on the
        CPU, so a ``seed`` gives the same images on every device and batch size.

        Shape: yields (b, C, S, S) float on the generator's device, b <= batch_size.
        """
        g = self.generator
        device = g.fc.weight.device
        rng = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        z_all = torch.randn(n, g.latent_dim, generator=rng)
        was = g.training
        g.eval()
        try:
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    yield g(z_all[start:start + batch_size].to(device))
        finally:
            g.train(was)

    def generate(self, n: int, *, seed: int | None = None, batch_size: int = 64) -> torch.Tensor:
        """``n`` images in [-1, 1] (see :meth:`batches`). Shape: -> (n, C, S, S)."""
        g = self.generator
        out = list(self.batches(n, seed=seed, batch_size=batch_size))
        return torch.cat(out) if out else torch.empty(0, g.channels, g.image_size, g.image_size)

    def sample(self, n: int, *, seed: int | None = None, batch_size: int = 64) -> torch.Tensor:
        """``n`` images as float in [0, 1] (the classifier's input range).

        Shape: -> (n, C, S, S) on the generator's device.
        """
        return self.generate(n, seed=seed, batch_size=batch_size).add(1).div(2).clamp(0, 1)

    def sample_uint8(self, n: int, *, seed: int | None = None,
                     batch_size: int = 64) -> torch.Tensor:
        """``n`` images as uint8 on the CPU (what the cache stores), converted batch by
        batch (1,000 images at 512 px take 1 GB, not 4).

        Shape: -> (n, C, S, S).
        """
        g = self.generator
        out = [to_uint8(x).cpu() for x in self.batches(n, seed=seed, batch_size=batch_size)]
        return torch.cat(out) if out else torch.empty(0, g.channels, g.image_size,
                                                      g.image_size, dtype=torch.uint8)
