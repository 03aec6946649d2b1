"""The paper's per-class DCGAN as a :class:`hpatk.core.Synthesizer` (registered as
``dcgan``, alias ``gan``).

Its parameters are the model's (``image_size``, ``channels``, ``latent_dim``, ``width``,
``dropout``, ``spectral_norm``) and the training recipe's (:class:`~.trainer.GanTrainConfig` fields:
``steps``, ``batch_size``, ``g_lr``, ``d_lr``, ..., ``device``); the seed comes from
``fit``. ``channels`` comes from the images; ``image_size`` left as None becomes the
largest ``8 * 2**n`` not above the images' side (64 for 96 px images; samples are
resized back to the cache's size by hpatk).

Example:
    >>> synth = get_registry().synthesizers.create("gan", image_size=32, width=4, steps=200)
    >>> synth.fit(images_uint8, labels, classes=[0])   # one class's images
    >>> synth.sample(8).shape
    (8, 4, 32, 32)
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch
from hpatk.core.base import Synthesizer
from hpatk.core.errors import HpatkError

_MODEL = {"image_size": None, "channels": None, "latent_dim": 100, "width": 64,
          "dropout": 0.25, "spectral_norm": False}


def _train_fields() -> dict[str, Any]:
    from hpatk.plugins.augment_gan.trainer import GanTrainConfig

    return {f.name: f.default for f in fields(GanTrainConfig) if f.name != "seed"}


class DCGANSynthesizer(Synthesizer):
    """One class's DCGAN (Radford et al. 2016, the Keras-GAN template the paper used)."""

    name = "dcgan"
    per_class = True

    def __init__(self, **params: Any) -> None:
        train = _train_fields()
        unknown = sorted(set(params) - set(_MODEL) - set(train))
        if unknown:
            raise HpatkError(f"dcgan: unknown parameter '{unknown[0]}' (known: "
                             f"{', '.join(sorted({*_MODEL, *train}))})")
        super().__init__(**{**_MODEL, **train, **params})
        self._check()
        self.gan: Any = None

    def _check(self) -> None:
        from hpatk.plugins.augment_gan.dcgan import num_stages
        from hpatk.plugins.augment_gan.trainer import GanTrainConfig

        p = self.params
        try:
            GanTrainConfig(**{k: p[k] for k in _train_fields()})
            if p["image_size"] is not None:
                num_stages(int(p["image_size"]))
            for key in ("width", "latent_dim"):
                if int(p[key]) < 1:
                    raise ValueError(f"{key} must be >= 1, got {p[key]}")
            if not 0 <= float(p["dropout"]) < 1:
                raise ValueError(f"dropout must be in [0, 1), got {p['dropout']}")
        except HpatkError as exc:
            raise HpatkError(f"dcgan: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise HpatkError(f"dcgan: {exc}") from None

    def _model(self) -> Any:
        from hpatk.plugins.augment_gan.dcgan import DCGAN

        p = self.params
        return DCGAN(latent_dim=int(p["latent_dim"]), channels=int(p["channels"]),
                     image_size=int(p["image_size"]), width=int(p["width"]),
                     dropout=float(p["dropout"]), spectral_norm=bool(p["spectral_norm"]))

    def fit(self, images: np.ndarray, labels: np.ndarray, *, classes: list[int],
            out_dir: Any = None, seed: int = 0, progress: bool = True,
            resume: bool = False, stains: list[str] | None = None) -> dict[str, Any]:
        from hpatk.plugins.augment_gan.trainer import GanTrainConfig, train_gan

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise HpatkError(f"dcgan: images must be uint8 (N, C, S, S), got {images.dtype} "
                             f"{images.shape}")
        if self.params["image_size"] is None:  # the largest 8 * 2**n the images allow
            side = int(images.shape[-1])
            if side < 16:
                raise HpatkError(f"dcgan: the images are {side} px; the DCGAN needs >= 16")
            self.params["image_size"] = 8 * 2 ** int(np.log2(side / 8))
        if images.shape[-1] != self.params["image_size"]:
            from hpatk.core.generator import resize_uint8

            images = resize_uint8(images, int(self.params["image_size"]))
        self.params["channels"] = int(images.shape[1])
        torch.manual_seed(int(seed))  # the initial weights
        self.gan = self._model()
        cfg = GanTrainConfig(**{k: self.params[k] for k in _train_fields()}, seed=int(seed))
        name = ",".join(str(c) for c in classes)
        result = train_gan(self.gan, images, cfg, out_dir=out_dir, resume=resume,
                           labels=None if self.per_class else labels,
                           meta={"stains": list(stains or []), "classes": list(classes)},
                           desc=f"{self.name} class{'es' if len(classes) > 1 else ''} {name}"
                           if progress else "")
        self.gan.eval()
        last = result.history[-1] if result.history else {}
        return {"steps": int(cfg.steps), "images": int(len(images)),
                **{k: float(v) for k, v in last.items() if k != "step"}}

    def sample(self, n: int, labels: np.ndarray | None = None, *,
               seed: int = 0) -> np.ndarray:
        if self.gan is None:
            raise HpatkError("dcgan: sample() before fit() or load_state_dict()")
        return self.gan.sample_uint8(int(n), seed=int(seed)).numpy()

    def state_dict(self) -> dict[str, Any]:
        if self.gan is None:
            raise HpatkError("dcgan: nothing to save before fit()")
        return {"generator": {k: v.detach().cpu()
                              for k, v in self.gan.generator.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.params["image_size"] is None or self.params["channels"] is None:
            raise HpatkError("dcgan: image_size and channels must be set to load weights")
        self.gan = self._model()
        self.gan.generator.load_state_dict(state["generator"])
        self.gan.eval()

    def export_module(self) -> Any:
        if self.gan is None:
            raise HpatkError("dcgan: export before fit() or load_state_dict()")
        return GeneratorGraph(self.gan.generator.cpu().eval())


class GeneratorGraph(torch.nn.Module):
    """noise (B, latent) ~ N(0, 1) -> images (B, C, S, S) in [0, 1] (the cache's range,
    not tanh's [-1, 1])."""

    def __init__(self, generator: Any) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return ((self.generator(noise) + 1) * 0.5).clamp(0, 1)
