"""hpatk metadata inside an ONNX file: what a deployed model needs to be used correctly.

Every value is stored in the model's ``metadata_props`` under a key ``hpatk.<name>``:
plain strings as they are (readable in Netron), everything else as JSON. Cheap to
import: no onnx, no torch.

Classifier keys: ``kind`` ("classifier"), ``format``, ``classes`` (class indices, in
output order), ``class_names``, ``thresholds`` (list or null), ``stains``,
``input_size``, ``enhance`` ({"name", **params}), ``normalize`` ({"mean", "std"}, baked
into the graph), ``output`` ("logits" or "probabilities"), ``input_name``,
``output_name``, ``backbone``, ``trained_size``, ``hpatk_version``,
``source_checkpoint``, ``source_sha256``, ``exporter``, ``opset``; int8 models also
``quantization`` (method, calibration, agreement with the float model).
Generator keys: ``kind`` ("generator"), ``synthesizer`` (its registered name),
``classes``, ``class_names``, ``class_index``/``class_name`` (a per-class generator's class;
null for a conditional one), ``stains``, ``image_size``, ``latent_dim``, ``label_dim`` (0,
or K for a conditional generator whose input is noise then labels), ``input``
(the input in words), ``enhance``, ``output_range`` and the provenance keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from hpatk.core.errors import HpatkError

PREFIX = "hpatk."
# Bump when a reader of older files could misread newer ones.
METADATA_FORMAT = 1
# Keys stored as plain strings; every other key is JSON.
STRING_KEYS = frozenset({
    "kind", "output", "input_name", "output_name", "backbone", "hpatk_version",
    "source_checkpoint", "source_sha256", "exporter", "output_range", "synthesizer",
    "input",
})
REQUIRED = {
    "classifier": ("classes", "class_names", "thresholds", "stains", "input_size", "enhance",
                   "normalize", "output", "input_name", "output_name"),
    "generator": ("synthesizer", "classes", "stains", "image_size", "latent_dim", "label_dim",
                  "input_name", "output_name"),
}


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """``{name: value}`` -> ``{"hpatk.name": str}`` for ``metadata_props``."""
    out = {}
    for key, value in meta.items():
        if key in STRING_KEYS:
            if not isinstance(value, str):
                raise TypeError(f"metadata '{key}' must be a string, got {type(value).__name__}")
            out[PREFIX + key] = value
        else:
            out[PREFIX + key] = json.dumps(value, sort_keys=True)
    return out


def decode_metadata(props: Mapping[str, str] | Iterable[tuple[str, str]],
                    source: str = "model") -> dict[str, Any]:
    """``metadata_props`` -> ``{name: value}`` for the ``hpatk.*`` keys (others ignored).

    Raises:
        HpatkError: a JSON value that does not parse (naming ``source`` and the key).
    """
    items = props.items() if isinstance(props, Mapping) else props
    meta: dict[str, Any] = {}
    for key, raw in items:
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        if name in STRING_KEYS:
            meta[name] = raw
            continue
        try:
            meta[name] = json.loads(raw)
        except ValueError as exc:
            raise HpatkError(f"{source}: metadata '{key}' is not valid JSON ({exc})") from None
    return meta


def validate_metadata(meta: Mapping[str, Any], source: str = "model",
                      kind: str | None = None) -> dict[str, Any]:
    """Check that ``meta`` is complete hpatk metadata (of ``kind`` when given).

    Raises:
        HpatkError: one line naming ``source`` and what is missing or wrong.
    """
    if "kind" not in meta:
        raise HpatkError(f"{source} has no hpatk metadata: it was not exported by "
                         "'hpatk export' (foreign ONNX models cannot be used)")
    found = meta["kind"]
    if found not in REQUIRED:
        raise HpatkError(f"{source}: unknown hpatk model kind '{found}'")
    if kind is not None and found != kind:
        raise HpatkError(f"{source} is a {found} model, not a {kind}")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > METADATA_FORMAT:
        raise HpatkError(f"{source}: hpatk metadata format {fmt!r} is not supported by this "
                         f"hpatk (format {METADATA_FORMAT}); upgrade hpatk")
    missing = [k for k in REQUIRED[found] if k not in meta]
    if missing:
        raise HpatkError(f"{source}: hpatk metadata lacks {', '.join(missing)}")
    if found == "classifier":
        _validate_classifier(meta, source)
    return dict(meta)


def _validate_classifier(meta: Mapping[str, Any], source: str) -> None:
    k = len(meta["classes"]) if isinstance(meta["classes"], list) else -1
    c = len(meta["stains"]) if isinstance(meta["stains"], list) else -1
    checks = [
        (k > 0 and all(isinstance(i, int) for i in meta["classes"]), "classes"),
        (isinstance(meta["class_names"], list) and len(meta["class_names"]) == k,
         "class_names"),
        (meta["thresholds"] is None or (isinstance(meta["thresholds"], list)
                                        and len(meta["thresholds"]) == k), "thresholds"),
        (c > 0 and all(isinstance(s, str) for s in meta["stains"]), "stains"),
        (isinstance(meta["input_size"], int) and meta["input_size"] > 0, "input_size"),
        (isinstance(meta["enhance"], dict) and isinstance(meta["enhance"].get("name"), str),
         "enhance"),
        (isinstance(meta["normalize"], dict)
         and all(len(meta["normalize"].get(x, ())) == c for x in ("mean", "std")),
         "normalize"),
        (meta["output"] in ("logits", "probabilities"), "output"),
    ]
    bad = [name for ok, name in checks if not ok]
    if bad:
        raise HpatkError(f"{source}: hpatk metadata has a malformed {', '.join(bad)}")
