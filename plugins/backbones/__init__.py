"""Built-in backbones: the paper's ImageNet CNNs through timm, plus ``timm:<name>``.

``factory(num_classes, in_chans=4, pretrained=None, **kw) -> nn.Module``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from hpatk.core import hookimpl

# hpatk name -> (timm model name, aliases, description)
TIMM_BACKBONES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "inceptionv4": ("inception_v4", ("inception_v4",), "InceptionV4 (the paper's best, 28 classes)"),
    "inceptionv3": ("inception_v3", ("inception_v3",), "InceptionV3"),
    "vgg16": ("vgg16", (), "VGG16 (the paper's best, 5 classes)"),
    "resnet18": ("resnet18", (), "ResNet18 (small: demos and tests)"),
    "resnet50": ("resnet50", (), "ResNet50"),
    "resnet101": ("resnet101", (), "ResNet101"),
    "densenet121": ("densenet121", (), "DenseNet121 (Kaggle HPA 2018 winner)"),
    "xception": ("legacy_xception", ("legacy_xception",), "Xception (timm legacy_xception)"),
}


def _timm(timm_name: str, num_classes: int, in_chans: int = 4, pretrained: str | None = None,
          **kw: Any) -> Any:
    from hpatk.plugins.backbones.timm_models import create_timm_backbone

    return create_timm_backbone(timm_name, num_classes=num_classes, in_chans=in_chans,
                                pretrained=pretrained, **kw)


def _timm_any(variant: str, num_classes: int, in_chans: int = 4, pretrained: str | None = None,
              **kw: Any) -> Any:
    return _timm(variant, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)


@hookimpl
def hpatk_register_backbones(register):
    for name, (timm_name, aliases, description) in TIMM_BACKBONES.items():
        register(name, partial(_timm, timm_name), aliases=aliases, description=description)
    register("timm:*", _timm_any, description="any timm model by name, e.g. timm:efficientnet_b0")
