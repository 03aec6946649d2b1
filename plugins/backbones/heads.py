"""Classifier heads on top of any backbone's ``forward_features`` (timm's interface).

``head="default"`` keeps the backbone's own head (timm: global pooling, dropout, linear).
The paper's heads (Verma et al. 2020, section 4) end in logits; the sigmoid is in the loss:

- ``paper_inceptionv4``: Dropout 0.5 -> BatchNorm -> global average pooling ->
  Dense 128 ReLU -> Dense K (the 28-class InceptionV4).
- ``paper_vgg16``: global average pooling -> Dense 256 ReLU -> Dense K (the 5-class VGG16;
  the paper does not say how the feature map becomes a vector: pooling, not flattening,
  keeps the head independent of the image size and small).
- ``paper``: the paper's head for the backbone where the paper gives one (inceptionv4,
  vgg16), the default head for every other backbone (the paper describes no other head).

Dropout and BatchNorm act on the feature map (B, C, H, W), before pooling, as Keras layers
stacked on a convolutional base do.
"""

from __future__ import annotations

from typing import Any

import torch
from hpatk.core.errors import HpatkError
from torch import nn

HEADS = ("default", "paper", "paper_inceptionv4", "paper_vgg16")
# backbone name -> its head in the paper
PAPER_HEADS = {"inceptionv4": "paper_inceptionv4", "vgg16": "paper_vgg16"}
# head name -> MLPHead arguments
HEAD_SPECS: dict[str, dict[str, Any]] = {
    "paper_inceptionv4": dict(hidden=128, dropout=0.5, batchnorm=True),
    "paper_vgg16": dict(hidden=256, dropout=0.0, batchnorm=False),
}


class MLPHead(nn.Module):
    """[Dropout] -> [BatchNorm] -> global average pooling -> Dense(hidden) ReLU -> Dense(K).

    Args:
        in_chs: channels of the feature map.
        num_classes: K, the number of logits.
        hidden: units of the hidden dense layer.
        dropout: dropout rate on the feature map (0: none).
        batchnorm: BatchNorm over the feature map's channels.

    Shape:
        (B, in_chs, H, W) -> (B, num_classes) logits.
    """

    def __init__(self, in_chs: int, num_classes: int, hidden: int, dropout: float = 0.0,
                 batchnorm: bool = False) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = nn.BatchNorm2d(in_chs) if batchnorm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(in_chs, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise HpatkError(f"this head needs a (B, C, H, W) feature map; the backbone gives "
                             f"shape {tuple(x.shape)} (use head='default')")
        x = self.pool(self.norm(self.drop(x))).flatten(1)
        return self.fc2(self.act(self.fc1(x)))


class BackboneWithHead(nn.Module):
    """A backbone's ``forward_features`` followed by a head.

    Shape:
        (B, in_chans, H, W) -> (B, num_classes) logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))


def feature_channels(model: nn.Module) -> int:
    """Channels of ``model.forward_features``' output (timm's ``feature_info``)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and "num_chs" in info[-1]:
        return int(info[-1]["num_chs"])
    return int(model.num_features)


def resolve_head(head: str, backbone: str) -> str:
    """The concrete head name: ``paper`` becomes the backbone's paper head or ``default``."""
    if head not in HEADS:
        raise HpatkError(f"unknown head '{head}' (known: {', '.join(HEADS)})")
    if head == "paper":
        return PAPER_HEADS.get(backbone, "default")
    return head


def attach_head(model: nn.Module, head: str, num_classes: int, backbone: str) -> nn.Module:
    """Return ``model`` with the head ``head`` (see :data:`HEADS`) for ``num_classes``.

    For a non-default head the backbone's own classifier is removed (``reset_classifier(0,
    "")``, and VGG's 4096-wide ``pre_logits`` convolutions), so no parameter goes unused.
    """
    head = resolve_head(head, backbone)
    if head == "default":
        return model
    in_chs = feature_channels(model)
    model.reset_classifier(0, "")
    pre_logits = getattr(model, "pre_logits", None)
    if pre_logits is not None and type(pre_logits).__name__ == "ConvMlp":  # timm's VGG head
        model.pre_logits = nn.Identity()
    return BackboneWithHead(model, MLPHead(in_chs, num_classes, **HEAD_SPECS[head]))
