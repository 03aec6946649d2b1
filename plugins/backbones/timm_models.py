"""timm backbones with 4 (or 3) stains and the paper's optional heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from hpatk.core.errors import RegistryError
from torch import nn


def create_timm_backbone(timm_name: str, num_classes: int, in_chans: int = 4,
                         pretrained: str | None = None, **kw: Any) -> nn.Module:
    """A timm model mapping (B, in_chans, H, W) to logits (B, num_classes).

    Args:
        pretrained: a local weights file (timm adapts the first conv to ``in_chans``),
            a hub name when online, or None for random init.
    """
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **kw)
    if pretrained:
        path = Path(pretrained)
        if path.exists():
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        elif any(c in pretrained for c in "/\\") or pretrained.endswith(
                (".pth", ".pt", ".bin", ".safetensors")):
            raise RegistryError(f"--pretrained: weights file '{pretrained}' does not exist")
        else:
            kwargs["pretrained_cfg_overlay"] = dict(hf_hub_id=pretrained)
    try:
        return timm.create_model(timm_name, pretrained=bool(pretrained), **kwargs)
    except RuntimeError as exc:
        if "unknown model" in str(exc).lower():
            raise RegistryError(f"timm has no model '{timm_name}'") from exc
        raise
