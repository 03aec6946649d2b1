"""Checkpoints: plain dicts of tensors and builtins, written atomically, loaded with
``torch.load(weights_only=True)`` (a pickle with code in it is refused, never run).

Every checkpoint has ``kind`` ("classifier", "generator" or "state": a plugin's
resumable training state, not a model) and ``format`` (int).
A classifier checkpoint::

    {"kind": "classifier", "format": 1, "hpatk_version": str,
     "model": {"backbone": str, "num_classes": int, "in_chans": int, "kwargs": dict},
     "state_dict": {...}, "classes": [int class indices], "class_names": [str],
     "stains": [str], "size": int, "enhance": {"name": str, **params},
     "normalize": {"mean": [float], "std": [float]}, "thresholds": [float] | None,
     "epoch": int, "metrics": {str: float}, ... training state for resume}

A generator checkpoint (:mod:`hpatk.core.generator`: any registered synthesizer)::

    {"kind": "generator", "format": 2, "hpatk_version": str,
     "synthesizer": str (registered name), "params": {factory keyword arguments},
     "state_dict": {...} (its ``state_dict()``), "per_class": bool,
     "classes": [int], "class_names": [str], "stains": [str], "enhance": {...},
     "image_size": int, "latent_dim": int, "train_ids": [str] (the images it learnt),
     "train_ids_sha256": str, "train_labels": uint8 (N, K), "fold": int | None,
     "key": str (reuse fingerprint), "cache_fingerprint": str, "seed": int, "summary"}
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from hpatk.core.errors import HpatkError, first_line, typed_line
from hpatk.core.io import atomic_path, disk_is_full

CHECKPOINT_KINDS = ("classifier", "generator", "state")


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` atomically (temp file + rename)."""
    import torch

    if obj.get("kind") not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch reports a short write as "unexpected pos"
            if disk_is_full(tmp):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
            raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a clear one-line error for anything else."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise HpatkError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HpatkError(f"checkpoint '{path}' refused: it is not a plain-data checkpoint "
                         f"(weights_only load failed: {first_line(exc)})") from exc
    except Exception as exc:
        raise HpatkError(f"checkpoint '{path}' cannot be read: {typed_line(exc)}") from exc
    if not isinstance(obj, dict) or obj.get("kind") not in CHECKPOINT_KINDS:
        raise HpatkError(f"checkpoint '{path}' is not an hpatk checkpoint (no 'kind' of "
                         f"{', '.join(CHECKPOINT_KINDS)})")
    return obj


def build_classifier(ckpt: dict[str, Any] | str | os.PathLike[str]) -> Any:
    """The classifier ``nn.Module`` a checkpoint describes, weights loaded, in eval mode.

    The backbone comes from the registry (``ckpt["model"]``: backbone, num_classes,
    in_chans, kwargs), built without pretrained weights, then ``state_dict`` is loaded
    strictly. The module maps normalised float (B, in_chans, S, S) to logits (B, K);
    normalisation (``ckpt["normalize"]``) is the caller's (export bakes it in).

    Args:
        ckpt: a checkpoint dict from :func:`load_checkpoint`, or a path to one.
    """
    from hpatk.core.registry import get_registry

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    if ckpt.get("kind") != "classifier":
        raise HpatkError(f"checkpoint is a '{ckpt.get('kind')}', not a classifier")
    spec = ckpt.get("model") or {}
    try:
        model = get_registry().backbones.create(
            spec["backbone"], num_classes=int(spec["num_classes"]),
            in_chans=int(spec["in_chans"]), pretrained=None, **dict(spec.get("kwargs") or {}))
    except KeyError as exc:
        raise HpatkError(f"classifier checkpoint lacks model field {exc}") from exc
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HpatkError(f"classifier checkpoint weights do not fit backbone "
                         f"'{spec['backbone']}': {first}") from exc
    return model.eval()
