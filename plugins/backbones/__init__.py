"""Built-in backbones: the paper's ImageNet CNNs through timm, ``timm:<name>`` for any timm
model, and NASNet-A Mobile (our own, :mod:`hpatk.plugins.backbones.nasnet`).

Every factory is ``factory(num_classes, in_chans=4, pretrained=None, **kw) -> nn.Module``
mapping (B, in_chans, H, W) to logits (B, num_classes). Keyword options:

- ``pretrained``: a local weights file (3-channel ImageNet weights are adapted to 4 stains
  by timm), a hub id or "imagenet" when online, None for random init.
- ``head``: "default" (timm's), "paper" (the paper's head for inceptionv4 / vgg16, the
  default elsewhere), "paper_inceptionv4" or "paper_vgg16" (on any backbone).
- anything else goes to the model (timm: ``drop_rate``, ``drop_path_rate``, ...).

torch and timm are imported inside the factories: this module stays cheap to import.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from hpatk.core import hookimpl

# hpatk name -> (timm model name, aliases, description)
TIMM_BACKBONES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "inceptionv4": ("inception_v4", ("inception_v4",),
                    "InceptionV4 (the paper's best, 28 classes)"),
    "inceptionv3": ("inception_v3", ("inception_v3",), "InceptionV3"),
    "vgg16": ("vgg16", (), "VGG16 (the paper's best, 5 classes)"),
    "resnet18": ("resnet18", (), "ResNet18 (small: demos and tests)"),
    "resnet50": ("resnet50", (), "ResNet50"),
    "resnet101": ("resnet101", (), "ResNet101"),
    "densenet121": ("densenet121", (), "DenseNet121 (Kaggle HPA 2018 winner)"),
    "xception": ("legacy_xception", ("legacy_xception",), "Xception (timm legacy_xception)"),
}


def _timm(hpatk_name: str, timm_name: str, num_classes: int, in_chans: int = 4,
          pretrained: str | None = None, **kw: Any) -> Any:
    from hpatk.plugins.backbones.timm_models import create_timm_backbone

    return create_timm_backbone(timm_name, num_classes=num_classes, in_chans=in_chans,
                                pretrained=pretrained, hpatk_name=hpatk_name, **kw)


def _timm_any(variant: str, num_classes: int, in_chans: int = 4, pretrained: str | None = None,
              **kw: Any) -> Any:
    from hpatk.plugins.backbones.timm_models import create_timm_backbone

    return create_timm_backbone(variant, num_classes=num_classes, in_chans=in_chans,
                                pretrained=pretrained, hpatk_name=f"timm:{variant}", **kw)


def _nasnet_mobile(num_classes: int, in_chans: int = 4, pretrained: str | None = None,
                   head: str = "default", **kw: Any) -> Any:
    """NASNet-A Mobile; ``pretrained`` is a local file only (e.g. Cadene's
    ``nasnetamobile-7e03cead.pth``): no hub hosts weights for it."""
    from hpatk.core.errors import HpatkError
    from hpatk.plugins.backbones.heads import attach_head, resolve_head
    from hpatk.plugins.backbones.nasnet import create_nasnet_mobile
    from hpatk.plugins.backbones.timm_models import build_with_pretrained, pretrained_source

    head = resolve_head(head or "default", "nasnet_mobile")
    if pretrained_source(pretrained)[0] in ("default", "hub"):
        raise HpatkError(f"--pretrained: no hub hosts weights for nasnet_mobile; pass a local "
                         f"weights file (got '{pretrained}')")

    def build(pretrained: bool, pretrained_cfg_overlay: dict | None = None, **kwargs: Any):
        file = (pretrained_cfg_overlay or {}).get("file") if pretrained else None
        try:
            return create_nasnet_mobile(pretrained_file=file, **kwargs)
        except TypeError as exc:  # an option the model does not take
            raise HpatkError(f"backbone 'nasnet_mobile': {exc}") from exc

    model = build_with_pretrained(build, "nasnet_mobile", pretrained, num_classes=num_classes,
                                  in_chans=in_chans, **kw)
    return attach_head(model, head, num_classes, "nasnet_mobile")


@hookimpl
def hpatk_register_backbones(register):
    for name, (timm_name, aliases, description) in TIMM_BACKBONES.items():
        register(name, partial(_timm, name, timm_name), aliases=aliases,
                 description=description)
    register("nasnet_mobile", _nasnet_mobile, aliases=("nasnetamobile",),
             description="NASNet-A Mobile 4@1056 (hpatk's own implementation, not in timm)")
    register("timm:*", _timm_any, description="any timm model by name, e.g. timm:efficientnet_b0")
