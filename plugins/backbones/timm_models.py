"""timm backbones with 4 (or 3) stains, pretrained weights from a file or the hub, and the
paper's optional heads (see :mod:`hpatk.plugins.backbones.heads`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpatk.core.errors import HpatkError, RegistryError, typed_line
from hpatk.plugins.backbones.heads import attach_head, resolve_head
from torch import nn

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pth.tar", ".npz")
# Values of ``pretrained`` that mean "timm's default pretrained weights" (from the hub).
DEFAULT_WEIGHTS = ("imagenet", "default", "true", "1")


def pretrained_source(pretrained: str | bool | None) -> tuple[str, str | None]:
    """Classify ``pretrained``: ("none", None), ("file", path), ("default", None) or
    ("hub", hub id).

    A path that exists is a file; something that looks like a path (a weights suffix, or a
    leading ``/``, ``.``, ``~``) but does not exist is an error; anything else is a Hugging
    Face hub id (e.g. ``timm/resnet50.a1_in1k``), fetched when online.
    """
    if pretrained is None or pretrained is False or pretrained == "":
        return "none", None
    if pretrained is True or str(pretrained).lower() in DEFAULT_WEIGHTS:
        return "default", None
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.is_dir():
        raise HpatkError(f"--pretrained: '{text}' is a folder, not a weights file")
    if path.is_file():
        return "file", str(path)
    if text.lower().endswith(WEIGHT_SUFFIXES) or text.startswith(("/", ".", "~", "\\")):
        raise HpatkError(f"--pretrained: weights file '{text}' does not exist")
    return "hub", text


def build_with_pretrained(build: Callable[..., nn.Module], model_name: str,
                          pretrained: str | bool | None, **kwargs: Any) -> nn.Module:
    """Call ``build(pretrained=bool, [pretrained_cfg_overlay=...], **kwargs)`` (timm style),
    turning any failure to get or load the weights into one clear :class:`HpatkError`."""
    kind, where = pretrained_source(pretrained)
    if kind == "none":
        return build(pretrained=False, **kwargs)
    if kind == "file":
        kwargs["pretrained_cfg_overlay"] = dict(file=where)
    elif kind == "hub":
        kwargs["pretrained_cfg_overlay"] = dict(hf_hub_id=where)
    try:
        return build(pretrained=True, **kwargs)
    except HpatkError:
        raise
    except Exception as exc:  # any loader failure becomes one line naming the weights
        if kind == "file":
            raise HpatkError(f"--pretrained: cannot load weights file '{where}' into "
                             f"{model_name}: {typed_line(exc)}") from exc
        what = "its default weights" if kind == "default" else f"weights '{where}'"
        raise HpatkError(f"--pretrained: cannot get {what} for {model_name} from the hub "
                         f"(offline?): {typed_line(exc)}; pass a local weights file "
                         f"instead") from exc


def create_timm_backbone(timm_name: str, num_classes: int, in_chans: int = 4,
                         pretrained: str | bool | None = None, head: str = "default",
                         hpatk_name: str | None = None, **kw: Any) -> nn.Module:
    """A timm model mapping (B, in_chans, H, W) to logits (B, num_classes).

    Args:
        timm_name: the timm model name (``inception_v4``, ``legacy_xception``, ...).
        num_classes: number of logits K.
        in_chans: input channels (4 stains or 3); timm adapts pretrained first-conv weights.
        pretrained: a local weights file (timm's ``pretrained_cfg_overlay=dict(file=...)``),
            a hub id or "imagenet" (timm's default weights) when online, or None.
        head: "default" (timm's), "paper", "paper_inceptionv4" or "paper_vgg16".
        hpatk_name: the registered backbone name ("paper" picks its head by this name).
        **kw: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Shape:
        (B, in_chans, H, W) -> (B, num_classes).
    """
    import timm

    backbone = hpatk_name or timm_name
    head = resolve_head(head or "default", backbone)  # fail before building anything

    def build(**kwargs: Any) -> nn.Module:
        try:
            return timm.create_model(timm_name, **kwargs)
        except RuntimeError as exc:
            if "unknown model" in str(exc).lower():
                raise RegistryError(f"timm has no model '{timm_name}'") from exc
            raise
        except TypeError as exc:  # an option the model does not take
            raise HpatkError(f"backbone '{backbone}': {typed_line(exc)}") from exc

    model = build_with_pretrained(build, backbone, pretrained, num_classes=num_classes,
                                  in_chans=in_chans, **kw)
    return attach_head(model, head, num_classes, backbone)
