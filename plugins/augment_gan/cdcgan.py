"""A conditional DCGAN (registered as ``cdcgan``): ONE generator for all selected
classes, conditioned on the multi-hot label vector, so rare classes with too few images
for a GAN of their own borrow the cell structure learnt from the common ones.

- Generator: the paper's DCGAN generator fed ``[z, y]`` (noise and the label vector
  concatenated, as in Mirza & Osindero 2014).
- Discriminator: the paper's DCGAN trunk with a *projection* head (Miyato & Koyama,
  "cGANs with projection discriminator", ICLR 2018): ``D(x, y) = fc(h) + <y W, h>``
  with ``h`` the trunk's features. We chose projection over an auxiliary classifier
  (AC-GAN, Odena et al. 2017) because AC-GAN's classification loss pushes samples
  towards easily classified, low-diversity images, and projection extends to
  multi-label ``y`` directly (``y W`` sums the embeddings of the classes present).

Training is the paper's recipe (:func:`~.trainer.train_gan`): the fake batch's labels are
drawn from the real training labels, so samples follow the real label co-occurrence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from hpatk.core.errors import HpatkError
from hpatk.plugins.augment_gan.dcgan import LATENT_DIM, Discriminator, Generator, to_uint8
from hpatk.plugins.augment_gan.synthesizer import DCGANSynthesizer
from torch import nn


class ConditionalGenerator(nn.Module):
    """(noise (B, latent), labels (B, K) in {0, 1}) -> images (B, C, S, S) in [-1, 1]."""

    def __init__(self, num_labels: int, latent_dim: int = LATENT_DIM, channels: int = 4,
                 image_size: int = 64, width: int = 64) -> None:
        super().__init__()
        self.num_labels, self.latent_dim = int(num_labels), int(latent_dim)
        self.channels, self.image_size = int(channels), int(image_size)
        self.net = Generator(self.latent_dim + self.num_labels, channels, image_size, width)
        self.fc = self.net.fc  # the device probe DCGAN.batches uses

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, y.to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """(images (B, C, S, S), labels (B, K)) -> (B, 1) real/fake logits."""

    def __init__(self, num_labels: int, channels: int = 4, image_size: int = 64,
                 width: int = 64, dropout: float = 0.25, spectral_norm: bool = False) -> None:
        super().__init__()
        trunk = Discriminator(channels, image_size, width, dropout, spectral_norm)
        self.net, self.fc = trunk.net, trunk.fc
        self.embed = nn.Linear(int(num_labels), self.fc.in_features, bias=False)
        nn.init.xavier_uniform_(self.embed.weight)
        if spectral_norm:
            nn.utils.parametrizations.spectral_norm(self.embed)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(x).flatten(1)
        return self.fc(h) + (self.embed(y.to(h.dtype)) * h).sum(1, keepdim=True)


class ConditionalDCGAN(nn.Module):
    """The pair, with the interface :func:`~.trainer.train_gan` expects."""

    conditional = True

    def __init__(self, num_labels: int, latent_dim: int = LATENT_DIM, channels: int = 4,
                 image_size: int = 64, width: int = 64, dropout: float = 0.25,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.generator = ConditionalGenerator(num_labels, latent_dim, channels, image_size,
                                              width)
        self.discriminator = ProjectionDiscriminator(num_labels, channels, image_size, width,
                                                     dropout, spectral_norm)
        self._config = {"num_labels": int(num_labels), "latent_dim": int(latent_dim),
                        "channels": int(channels), "image_size": int(image_size),
                        "width": int(width)}

    def config(self) -> dict[str, int]:
        return dict(self._config)

    def batches(self, labels: torch.Tensor, *, seed: int | None = None,
                batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Images in [-1, 1] for each label vector, generator in eval mode; the noise is
        drawn on the CPU (same images on every device)."""
        g = self.generator
        device = g.fc.weight.device
        rng = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        z_all = torch.randn(len(labels), g.latent_dim, generator=rng)
        was = g.training
        g.eval()
        try:
            with torch.no_grad():
                for s in range(0, len(labels), batch_size):
                    yield g(z_all[s:s + batch_size].to(device),
                            labels[s:s + batch_size].to(device))
        finally:
            g.train(was)


class ConditionalDCGANSynthesizer(DCGANSynthesizer):
    """``cdcgan``: the DCGAN parameters, one model for all classes (``per_class`` False)."""

    name = "cdcgan"
    per_class = False

    def __init__(self, **params: Any) -> None:
        params = dict(params)
        self._num_labels = params.pop("num_labels", None)
        super().__init__(**params)
        if self._num_labels is not None:
            self.params["num_labels"] = int(self._num_labels)

    def _model(self) -> Any:
        p = self.params
        return ConditionalDCGAN(int(p["num_labels"]), latent_dim=int(p["latent_dim"]),
                                channels=int(p["channels"]), image_size=int(p["image_size"]),
                                width=int(p["width"]), dropout=float(p["dropout"]),
                                spectral_norm=bool(p["spectral_norm"]))

    def fit(self, images: np.ndarray, labels: np.ndarray, *, classes: list[int],
            out_dir: Any = None, seed: int = 0, progress: bool = True,
            resume: bool = False, stains: list[str] | None = None) -> dict[str, Any]:
        labels = np.asarray(labels)
        if labels.ndim != 2 or len(labels) != len(images) or labels.shape[1] != len(classes):
            raise HpatkError(f"cdcgan: labels must be (N, {len(classes)}) for {len(images)} "
                             f"images, got {labels.shape}")
        self.params["num_labels"] = int(labels.shape[1])
        return super().fit(images, labels, classes=classes, out_dir=out_dir, seed=seed,
                           progress=progress, resume=resume, stains=stains)

    def sample(self, n: int, labels: np.ndarray | None = None, *,
               seed: int = 0) -> np.ndarray:
        if self.gan is None:
            raise HpatkError("cdcgan: sample() before fit() or load_state_dict()")
        k = int(self.params["num_labels"])
        if labels is None or np.asarray(labels).shape != (int(n), k):
            raise HpatkError(f"cdcgan: sample({n}) needs labels of shape ({n}, {k})")
        y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
        out = [to_uint8(x).cpu() for x in self.gan.batches(y, seed=seed)]
        return torch.cat(out).numpy() if out else np.zeros(
            (0, int(self.params["channels"]), self.image_size, self.image_size), np.uint8)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.params.get("num_labels") is None:
            raise HpatkError("cdcgan: num_labels must be set to load weights")
        super().load_state_dict(state)

    def export_module(self) -> Any:
        if self.gan is None:
            raise HpatkError("cdcgan: export before fit() or load_state_dict()")
        return ConditionalGeneratorGraph(self.gan.generator.cpu().eval())


class ConditionalGeneratorGraph(nn.Module):
    """Noise and labels concatenated, (B, latent + K) -> images (B, C, S, S) in [0, 1]
    (one input keeps the ONNX interface that of every generator)."""

    def __init__(self, generator: ConditionalGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, noise_labels: torch.Tensor) -> torch.Tensor:
        return ((self.generator.net(noise_labels) + 1) * 0.5).clamp(0, 1)
