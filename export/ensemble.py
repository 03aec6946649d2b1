"""A fold ensemble (or one classifier with test-time flips) as ONE ONNX classifier.

``hpatk export RUN`` on an all-folds run (``hpatk train --fold all``) traces every fold's
best macro-F1 model into one graph that averages their probabilities (each fold keeps its
own normalisation), optionally over the four flips (``--tta flips``, baked into the
graph). The file carries the run's out-of-fold thresholds (``RUN/thresholds.json``) and
OOF metrics, and is an ordinary hpatk classifier for ``hpatk predict``, ``hpatk serve``
and ``hpatk evaluate``: metadata ``kind`` is ``classifier``, plus ``ensemble`` (members,
folds, checksums) and ``tta``. Parity is checked against the PyTorch ensemble at batch
1, 2 and 7 like every export.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.errors import HpatkError
from hpatk.export.onnx import (
    ExportOptions,
    ExportResult,
    ExportSpec,
    classifier_spec,
    export_loaded,
    image_inputs,
)

if TYPE_CHECKING:
    import torch

# what must agree between the members: they see the same input
_SAME = ("classes", "stains", "size", "enhance")


def ensemble_module(members: list[torch.nn.Module], tta: str = "none") -> torch.nn.Module:
    """images (B, C, S, S) -> mean over members (and flips) of their probabilities (B, K).

    Each member maps images in [0, 1] to probabilities (normalisation inside).
    """
    import torch
    from hpatk.core.tta import tta_axes

    flips = [list(a) for a in tta_axes(tta)]  # the views predict/serve/evaluate average

    class EnsembleGraph(torch.nn.Module):
        """The mean of ``len(members) * len(flips)`` probability maps."""

        def __init__(self) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            total = None
            for dims in flips:
                x = torch.flip(images, dims) if dims else images
                for m in self.members:
                    p = m(x)
                    total = p if total is None else total + p
            return total / float(len(flips) * len(self.members))

    return EnsembleGraph().eval()


def ensemble_spec(ckpt: dict[str, Any], options: ExportOptions) -> ExportSpec:
    """Ensemble ``{"members": [classifier ckpt, ...], "thresholds", "tta", "info"}``:
    images float (B, C, S, S) in [0, 1] -> mean probabilities (B, K)."""
    members = ckpt.get("members") or []
    if not members:
        raise HpatkError("an ensemble needs at least one classifier checkpoint")
    if options.output != "probabilities":
        raise HpatkError("--logits: an ensemble averages probabilities; export without it")
    first = members[0]
    for i, m in enumerate(members[1:], 1):
        for key in _SAME:
            if m.get(key) != first.get(key):
                raise HpatkError(f"ensemble member {i} differs from member 0 in '{key}' "
                                 f"({m.get(key)} vs {first.get(key)})")
    # each member's own graph: images in [0, 1] -> its normalisation -> model -> sigmoid
    specs = [classifier_spec(m, options) for m in members]  # validates every member
    tta = str(ckpt.get("tta", "none"))
    module = ensemble_module([s.module for s in specs], tta)
    meta = dict(specs[0].metadata)
    k = len(meta["classes"])
    thresholds = ckpt.get("thresholds")
    if thresholds is not None and len(thresholds) != k:
        raise HpatkError(f"ensemble: {len(thresholds)} thresholds for {k} classes")
    norms = [s.metadata["normalize"] for s in specs]
    meta.update(
        kind="classifier", tta=tta,
        thresholds=None if thresholds is None else [float(t) for t in thresholds],
        # each member normalises with its own statistics inside the graph; their mean here
        normalize={x: np.mean([n[x] for n in norms], axis=0).tolist() for x in ("mean", "std")},
        ensemble={"members": len(members), **dict(ckpt.get("info") or {}),
                  "normalize": norms})
    size = int(meta["input_size"])
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    views = f"{len(members)} model{'s' if len(members) > 1 else ''}" + (
        " x 4 flips" if tta == "flips" else "")
    return ExportSpec(
        module=module, input_name="images", output_name="probabilities",
        make_inputs=lambda n, seed: image_inputs(n, seed, mean, std, size), metadata=meta,
        summary=f"{meta['backbone']} ensemble of {views}, {len(meta['stains'])} stains x "
                f"{size} px -> {k} probabilities (mean)",
        degenerate=specs[0].degenerate)


def export_ensemble(checkpoints: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    thresholds: list[float] | None, tta: str = "none",
                    info: dict[str, Any] | None = None, **kwargs: Any) -> ExportResult:
    """Export the mean of classifier ``checkpoints`` (optionally over flips) as one model.

    Args:
        thresholds: the ensemble's per-class thresholds (e.g. out-of-fold tuned).
        info: extra ``ensemble`` metadata (folds, where the thresholds come from, ...).
        **kwargs: :func:`hpatk.export.onnx.export_loaded` options (opset, exporter, size,
            verify).
    """
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.io import file_sha256

    paths = [Path(p) for p in checkpoints]
    loaded = []
    for p in paths:
        ck = load_checkpoint(p)
        if ck.get("kind") != "classifier":
            raise HpatkError(f"checkpoint '{p}' is not a classifier")
        loaded.append(ck)
    hashes = [file_sha256(p) for p in paths]
    info = {**dict(info or {}),
            "checkpoints": [{"file": _short(p), "sha256": h}
                            for p, h in zip(paths, hashes, strict=True)]}
    ckpt = {"kind": "ensemble", "members": loaded, "thresholds": thresholds, "tta": tta,
            "info": info}
    source_sha = hashlib.sha256("".join(hashes).encode()).hexdigest()
    name = paths[0].parent.parent.name if len(paths) > 1 else paths[0].name
    return export_loaded(ckpt, out, source=name, source_sha256=source_sha, spec_fn=ensemble_spec,
                         **kwargs)


def _short(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def export_run(run: str | os.PathLike[str], out: str | os.PathLike[str], *,
               tta: str = "none", checkpoint: str = "best_macro_f1",
               **kwargs: Any) -> ExportResult:
    """``hpatk export RUN``: an all-folds run -> the fold ensemble with the out-of-fold
    thresholds; a one-fold run -> its ``best_macro_f1.pt`` (with ``tta``, the flips baked
    in).

    Raises:
        HpatkError: not a run folder, a fold without its checkpoint, no OOF thresholds.
    """
    from hpatk.core.run import read_thresholds
    from hpatk.core.train_config import read_config

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise HpatkError(f"'{run}' is not a run folder (no config.yaml)")
    cfg = read_config(run / "config.yaml")
    if cfg.fold != "all":
        path = run / f"{checkpoint}.pt"
        if not path.is_file():
            raise HpatkError(f"run '{run}': '{path}' does not exist (did training finish?)")
        if tta == "none":
            from hpatk.export.onnx import export_checkpoint

            return export_checkpoint(path, out, **kwargs)
        from hpatk.core.checkpoint import load_checkpoint

        return export_ensemble([path], out, thresholds=load_checkpoint(path).get("thresholds"),
                               tta=tta, info={"folds": [int(cfg.fold)],
                                              "thresholds": "validation fold"}, **kwargs)
    paths = [run / f"fold_{k}" / f"{checkpoint}.pt" for k in cfg.fold_list()]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise HpatkError(f"run '{run}': '{missing[0]}' does not exist (did every fold finish?)")
    th_path = run / "thresholds.json"
    if not th_path.is_file():
        raise HpatkError(f"run '{run}' has no out-of-fold thresholds.json (trained before "
                         f"hpatk wrote them? retrain, or export one fold's checkpoint)")
    th = read_thresholds(th_path)
    info = {"folds": list(cfg.fold_list()), "thresholds": "out-of-fold",
            "oof": {k: th[k] for k in ("images", "macro_f1_at_0_5", "macro_f1_tuned",
                                       "macro_f1_all_tuned", "classes_present") if k in th}}
    return export_ensemble(paths, out, thresholds=[float(t) for t in th["thresholds"]],
                           tta=tta, info=info, **kwargs)
