"""Training settings: one dataclass, written to ``RUN/config.yaml`` and replayable.

Cheap to import (no torch): the CLI builds a :class:`TrainConfig` before any heavy import.
The defaults are the paper's recipe (Adam, lr 5e-4 decaying as ``exp(-0.01 * epoch)``,
batch 32 doubled every 15 epochs up to 128, 35 epochs, 5-fold CV, focal loss gamma 2).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpatk.core.classes import parse_classes, present_min
from hpatk.core.errors import HpatkError

# Settings that may change when a run is resumed: they do not alter what is computed.
RESUME_SAFE = frozenset({"data", "cache_dir", "epochs", "workers", "device", "out"})


@dataclass
class TrainConfig:
    """Every setting of one training run (one fold, or all folds in turn).

    ``fold`` is an int in ``[0, folds)`` or ``"all"``. ``size``/``enhance`` left as None
    are taken from the cache; the resolved values are what ``config.yaml`` records.
    """

    data: str = field(default="", metadata={"kind": "path"})
    out: str = field(default="", metadata={"kind": "path"})
    backbone: str = "inceptionv4"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    head: str = "default"
    pretrained: str | None = None
    aug: str = "classic"
    aug_params: dict[str, Any] = field(default_factory=dict)
    batch_aug: str = "classic"
    synthetic_per_class: int = 1000
    synthetic_source: str = "fit"
    loss: str = "focal"
    loss_params: dict[str, Any] = field(default_factory=lambda: {"gamma": 2.0})
    folds: int = 5
    fold: int | str = field(default=0, metadata={"kind": "fold"})
    folds_file: str | None = field(default=None, metadata={"kind": "path"})
    epochs: int = 35
    size: int | None = None
    classes: str = field(default="all", metadata={"kind": "classes"})
    real_per_class: int | None = None
    in_stains: list[str] | None = field(default=None, metadata={"kind": "stains"})
    enhance: str | None = None
    enhance_params: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = field(default=None, metadata={"kind": "path"})
    lr: float = 5e-4
    lr_decay: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 32
    batch_double_every: int = 15
    max_batch_size: int = 128
    workers: int | None = None
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = False
    seed: int = 0

    # -- schedule ----------------------------------------------------------------------
    def lr_factor(self, epoch: int) -> float:
        """Multiplier of ``lr`` at 0-based ``epoch``: ``exp(-lr_decay * epoch)``."""
        return math.exp(-self.lr_decay * epoch)

    def batch_size_at(self, epoch: int) -> int:
        """Batch size at 0-based ``epoch``: doubled every ``batch_double_every`` epochs,
        capped at ``max_batch_size`` (32, 64, 128 at epochs 0, 15, 30 by default)."""
        if self.batch_double_every <= 0:
            return self.batch_size
        grown = self.batch_size * 2 ** (epoch // self.batch_double_every)
        return max(self.batch_size, min(grown, self.max_batch_size))

    def class_indices(self, counts: Any = None) -> tuple[int, ...]:
        """The class indices this run predicts, in order (``all``, ``top5``, ``0,25,2``,
        or ``present[:N]`` given the data's per-class image ``counts`` (28,))."""
        return parse_classes(self.classes, counts)

    def fold_list(self) -> list[int]:
        """The folds this run trains: ``[fold]`` or every fold for ``"all"``."""
        return list(range(self.folds)) if self.fold == "all" else [int(self.fold)]

    def __post_init__(self) -> None:
        # where each setting came from, for messages: "--epochs" or "config 'c.yaml': epochs"
        origin = _ORIGIN.get() or {}
        object.__setattr__(self, "_origin", dict(origin))
        self.validate()

    def where(self, name: str) -> str:
        """How the user gave setting ``name``: ``config 'c.yaml': name`` or ``--name``."""
        source = getattr(self, "_origin", {}).get(name)
        if source:
            return f"{source}: {name}"
        return "--" + name.replace("_params", "_param").replace("_", "-")

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict, naming ``source`` and the key on unknown or bad settings."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad_keys = [k for k in d if not isinstance(k, str)]
        if bad_keys:
            raise HpatkError(f"{source}: setting names must be text, not {bad_keys[0]!r}")
        unknown = sorted(set(d) - known)
        if unknown:
            raise HpatkError(f"{source}: unknown setting '{unknown[0]}' "
                             f"(known: {', '.join(sorted(known))})")
        token = _ORIGIN.set(dict.fromkeys(d, source))
        try:
            return cls(**d)
        finally:
            _ORIGIN.reset(token)

    def override(self, **changes: Any) -> TrainConfig:
        """:meth:`replace`, except that a new ``loss``/``aug``/``backbone`` given without
        its ``*_params`` drops the old one's parameters (focal's gamma means nothing to
        bce)."""
        for name in ("loss", "aug", "backbone"):
            params = f"{name}_params"
            if name in changes and params not in changes and changes[name] != getattr(self, name):
                changes[params] = {"gamma": 2.0} if changes[name] == "focal" else {}
        return self.replace(**changes)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (given as options), validated."""
        origin = {k: v for k, v in getattr(self, "_origin", {}).items() if k not in changes}
        token = _ORIGIN.set(origin)
        try:
            return dataclasses.replace(self, **changes)
        finally:
            _ORIGIN.reset(token)

    def validate(self) -> None:
        """Check every setting's type and range (the one place this is done; construction
        calls it). Raises one clear line naming the setting and where it came from."""
        def bad(name: str, why: str) -> HpatkError:
            return HpatkError(f"{self.where(name)} {why}")

        for f in dataclasses.fields(self):
            kind, optional = _field_kind(f)
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            object.__setattr__(self, f.name, _check_type(value, kind, lambda why, n=f.name:
                                                          bad(n, why)))
        if self.folds < 2:
            raise bad("folds", f"must be at least 2, not {self.folds}")
        if self.fold != "all" and not 0 <= int(self.fold) < self.folds:
            raise bad("fold", f"must be in 0..{self.folds - 1}, not {self.fold}")
        for name in ("epochs", "batch_size", "max_batch_size"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be positive, not {getattr(self, name)}")
        for name in ("batch_double_every", "seed"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, not {getattr(self, name)}")
        if self.max_batch_size < self.batch_size:
            raise bad("max_batch_size", f"({self.max_batch_size}) is below batch_size "
                      f"({self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", f"must be a positive number, not {self.lr}")
        for name in ("lr_decay", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise bad(name, f"must be a number >= 0, not {value}")
        if self.size is not None and self.size < 16:
            raise bad("size", f"must be at least 16 px, not {self.size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", f"must be auto, cpu or cuda, not '{self.device}'")
        if self.head not in ("default", "paper"):
            raise bad("head", f"must be 'default' or 'paper', not '{self.head}'")
        if self.workers is not None and self.workers < 0:
            raise bad("workers", f"must be >= 0, not {self.workers}")
        if self.synthetic_per_class < 1:
            raise bad("synthetic_per_class", f"must be positive, not {self.synthetic_per_class}")
        if self.synthetic_source not in ("fit", "cache"):
            raise bad("synthetic_source", f"must be 'fit' or 'cache', not "
                      f"'{self.synthetic_source}'")
        if self.real_per_class is not None and self.real_per_class < 1:
            raise bad("real_per_class", f"must be positive, not {self.real_per_class}")
        if self.in_stains is not None and not self.in_stains:
            raise bad("in_stains", "must name at least one stain")
        try:
            if present_min(self.classes) is None:  # present[:N] is resolved on the data
                parse_classes(self.classes)
        except HpatkError as exc:
            msg = str(exc).removeprefix("--classes")
            raise HpatkError(self.where("classes") + msg) from None


def _field_kind(f: dataclasses.Field[Any]) -> tuple[str, bool]:
    """(what ``_check_type`` checks, None allowed) of a setting, read from its annotation
    (``int``, ``str | None``, ``dict[...]`` = params) or its ``metadata["kind"]`` (path,
    fold, classes, stains: a meaning the type does not carry)."""
    base, none, _ = str(f.type).partition(" | None")
    kind = f.metadata.get("kind") or ("params" if base.startswith("dict[") else base)
    return kind, bool(none)


_ORIGIN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hpatk_train_config_origin", default=None)


def _check_type(value: Any, kind: str, bad: Any) -> Any:
    """``value`` checked (and normalised) as ``kind``; ``bad(why)`` makes the error."""
    shown = f"'{value}'" if isinstance(value, str) else repr(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, not {shown}")
        return value
    if kind == "float":
        if isinstance(value, bool):
            raise bad(f"must be a number, not {shown}")
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 as text
            try:
                return float(value)
            except ValueError:
                raise bad(f"must be a number, not {shown}") from None
        if not isinstance(value, (int, float)):
            raise bad(f"must be a number, not {shown}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, not {shown}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad(f"must be text, not {shown}")
        return value
    if kind == "path":
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad(f"must be a path, not {shown}")
        return value
    if kind == "params":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad(f"must be a mapping of parameter names to values, not {shown}")
        return dict(value)
    if kind == "fold":
        if value == "all":
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer or 'all', not {shown}")
        return value
    if kind == "classes":
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        if not isinstance(value, str):
            raise bad(f"must be 'all', 'top5', 'present[:N]' or indices like '0,25,2', not {shown}")
        return value
    if kind == "stains":  # a list of names, or one comma-separated text
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise bad(f"must be a list of stain names, not {shown}")
        return list(value)
    raise AssertionError(kind)


def read_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a ``config.yaml`` written by :func:`write_config`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise HpatkError(f"config '{path}' does not exist")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise HpatkError(f"config '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(d, dict):
        raise HpatkError(f"config '{path}' must be a mapping of settings")
    d = d.get("train", d)  # a future file may nest settings; accept both
    return TrainConfig.from_dict(d, source=f"config '{path}'")


def write_config(cfg: TrainConfig, path: str | os.PathLike[str],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write every setting (plus ``extra`` provenance under ``_info``) atomically."""
    import yaml
    from hpatk.core.io import atomic_open

    d = cfg.to_dict()
    text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None)
    if extra:
        info = yaml.safe_dump({"_info": extra}, sort_keys=False)
        text += "# provenance (ignored on replay)\n" + "\n".join(
            "# " + line for line in info.splitlines()) + "\n"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
