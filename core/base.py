"""Base classes plugins build on. Cheap to import: torch is imported inside methods."""

from __future__ import annotations

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
