"""Base classes plugins build on. Cheap to import: torch is imported inside methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


class Enhancer:
    """A contrast enhancer, applied per channel.

    Subclasses implement :meth:`forward` (a torch path that works on any device) and may
    override :meth:`apply_uint8` with a faster CPU path (the cache builder and
    ``hpatk predict`` call it on decoded images).

    Shape:
        forward: float (B, C, H, W) in [0, 1] -> float (B, C, H, W) in [0, 1].
        apply_uint8: uint8 (C, H, W) -> uint8 (C, H, W).
    """

    name: str = "enhancer"

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        """Enhance one uint8 (C, H, W) image; by default through :meth:`forward`."""
        import numpy as np
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)[None]
        y = self.forward(x)[0]
        return y.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()

    def config(self) -> dict[str, Any]:
        """Name and parameters: recorded in cache fingerprints and ONNX metadata."""
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Synthesizer:
    """Generative augmentation: learns from a fold's training images, makes new ones.

    A plugin registers a factory through ``hpatk_register_synthesizers``; ``hpatk train
    --aug NAME`` builds one instance per class (``per_class = True``, e.g. a DCGAN per
    class) or one for all selected classes (``per_class = False``: a model conditioned on
    the label vector), fits it on exactly the training images of the fold being trained,
    and samples from it. The factory's keyword arguments (``params``) plus
    :meth:`load_state_dict` rebuild a fitted synthesizer: that is what a generator
    checkpoint stores, and how ``hpatk gan sample`` and ``hpatk export`` rebuild it.

    Conventions for ``params``: ``image_size`` (side of the images it makes; None = the
    training images' size), ``channels`` (stains), ``device`` ("auto", "cpu", "cuda").

    Shape:
        fit: images uint8 (N, C, S, S), labels uint8 (N, K) over ``classes``.
        sample: -> uint8 (n, C, s, s), s = :attr:`image_size`.
    """

    name: str = "synthesizer"
    per_class: bool = True

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    @property
    def image_size(self) -> int | None:
        """Side of the images :meth:`sample` returns (None until known)."""
        size = self.params.get("image_size")
        return None if size is None else int(size)

    @property
    def latent_dim(self) -> int:
        """Length of the noise vector of :meth:`export_module`."""
        return int(self.params.get("latent_dim", 100))

    def fit(self, images: np.ndarray, labels: np.ndarray, *, classes: list[int],
            out_dir: Any = None, seed: int = 0, progress: bool = True,
            resume: bool = False, stains: Sequence[str] = ()) -> dict[str, Any]:
        """Learn the images (uint8 (N, C, S, S), already at :attr:`image_size` when that
        is set) with labels (uint8 (N, K), columns = ``classes``). Files (logs, pictures,
        resumable state) go to ``out_dir`` when given; with ``resume``, continue from the
        state left there. Fixes unset params (``image_size``, ``channels``) from the
        images. ``stains``: the images' channel names (for pictures). Returns a summary
        (plain data)."""
        raise NotImplementedError

    def sample(self, n: int, labels: np.ndarray | None = None, *,
               seed: int = 0) -> np.ndarray:
        """``n`` images as uint8 (n, C, S, S); a conditional synthesizer needs
        ``labels`` uint8 (n, K) over the classes it was fitted on."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Tensors (and plain data) that, with ``params``, rebuild the fitted model."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def export_module(self) -> torch.nn.Module:
        """An ``nn.Module`` for ONNX: noise float (B, latent_dim) -> images float
        (B, C, S, S) in [0, 1]; a conditional synthesizer's takes noise and the label
        vector concatenated, (B, latent_dim + K)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Name and parameters: recorded in generator checkpoints and fingerprints."""
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
