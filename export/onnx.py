"""ONNX export of hpatk checkpoints, dispatched on the checkpoint's ``kind``.

An *exporter* turns a checkpoint dict into an :class:`ExportSpec`: the eval-mode module
to trace, its input/output names, inputs for the parity check and the metadata to
embed. :func:`export_checkpoint` does the rest for every kind: trace with the chosen
torch exporter, embed metadata, ``onnx.checker`` (full check), parity against PyTorch
with ONNX Runtime at batch 1, 2 and 7, and only then move the file into place. A new
kind plugs in with ``@register_exporter("kind")``.

Exporters: ``legacy`` (TorchScript, opset 17: fast, one file) and ``dynamo``
(torch.export, opset 18+; needs onnxscript; slower). torch 2.14 defaults to dynamo, so
the choice is always passed explicitly. ``auto`` (the default) uses legacy and falls back
to dynamo only where the TorchScript exporter cannot convert the model (timm's vgg16
below 224 px: an adaptive pooling that upsamples); the file records which one ran.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.errors import HpatkError, first_line, typed_line
from hpatk.core.io import file_sha256, is_write_error, make_dirs, write_error
from hpatk.core.version import __version__
from hpatk.export.metadata import METADATA_FORMAT, encode_metadata
from hpatk.export.parity import degenerate_outputs, reference_outputs, verify_parity

if TYPE_CHECKING:
    import onnx
    import torch

EXPORTERS = ("auto", "legacy", "dynamo")
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
# torch.export specialises batch sizes 0 and 1, so trace at 2 to keep the axis dynamic.
EXPORT_BATCH = 2
# protobuf cannot serialise 2 GiB; larger models keep their weights in OUT.data.
SINGLE_FILE_LIMIT = 2**31 - 2**24


@dataclass
class ExportOptions:
    """User choices an exporter may honour (or refuse with an HpatkError)."""

    output: str = "probabilities"  # classifiers: "probabilities" (sigmoid in graph) or "logits"
    size: int | None = None  # classifiers: input size (default: the training size)


@dataclass
class ExportSpec:
    """What one checkpoint kind contributes to an export.

    ``make_inputs(n, seed)`` returns float32 (n, ...) inputs for tracing and parity;
    ``degenerate(outputs)`` returns why reference outputs cannot prove parity (constant,
    saturated, NaN) or None.
    """

    module: torch.nn.Module
    input_name: str
    output_name: str
    make_inputs: Callable[[int, int], np.ndarray]
    metadata: dict[str, Any]
    summary: str
    degenerate: Callable[[np.ndarray], str | None] | None = None  # default: degenerate_outputs


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    path: Path
    files: list[Path]
    kind: str
    exporter: str
    opset: int
    metadata: dict[str, Any]
    summary: str
    parity: dict[int, dict[str, float]] | None  # batch -> {"max_abs", "max_rel"}
    seconds: float
    quantization: dict[str, Any] | None = None  # int8: method, agreement with the float
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. an exporter fallback

    @property
    def max_abs_error(self) -> float | None:
        return max(p["max_abs"] for p in self.parity.values()) if self.parity else None


Exporter = Callable[[dict[str, Any], ExportOptions], ExportSpec]
KIND_EXPORTERS: dict[str, Exporter] = {}  # checkpoint kind -> exporter (register_exporter)


def register_exporter(kind: str) -> Callable[[Exporter], Exporter]:
    """Decorator: ``fn(ckpt, options) -> ExportSpec`` exports checkpoints of ``kind``."""

    def add(fn: Exporter) -> Exporter:
        if kind in KIND_EXPORTERS and KIND_EXPORTERS[kind] is not fn:
            raise ValueError(f"an exporter for checkpoint kind '{kind}' is already registered")
        KIND_EXPORTERS[kind] = fn
        return fn

    return add


def exporter_kinds() -> list[str]:
    """Checkpoint kinds that can be exported."""
    return sorted(KIND_EXPORTERS)


def export_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      opset: int | None = None, exporter: str = "auto",
                      output: str = "probabilities", size: int | None = None,
                      verify: bool = True, quantize: str | None = None,
                      calibration: str | os.PathLike[str] | None = None,
                      calibration_n: int = 64) -> ExportResult:
    """Export an hpatk checkpoint (classifier or generator) to ONNX at ``out``.

    Args:
        checkpoint: a ``.pt`` written by hpatk (its ``kind`` picks the exporter).
        out: the ``.onnx`` to write; replaced only when every check passed.
        opset: ONNX opset (default 17 for ``legacy``, 18 for ``dynamo``).
        exporter: ``"legacy"`` (TorchScript), ``"dynamo"`` (torch.export) or ``"auto"``
            (legacy, falling back to dynamo where legacy cannot convert the model).
        output: classifiers: ``"probabilities"`` (sigmoid in the graph) or ``"logits"``.
        size: classifiers: the input size (default: the checkpoint's training size).
        verify: run the PyTorch parity check (``onnx.checker`` always runs).
        quantize: classifiers: ``"int8"`` writes an int8 (QDQ) model instead, calibrated
            on ``calibration`` (after the float model passed every check).
        calibration: training images for ``quantize``: a dataset folder or a cache.
        calibration_n: how many calibration images.

    Returns:
        An :class:`ExportResult`.

    Raises:
        HpatkError: unreadable or unsupported checkpoint, failed export, checker or
            parity failure; nothing is left at ``out``.
    """
    from hpatk.core.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    if Path(out).is_dir():
        raise HpatkError(f"--out '{out}' is a folder; give a file name like model.onnx")
    ckpt = load_checkpoint(checkpoint)
    if ckpt["kind"] not in KIND_EXPORTERS:
        raise HpatkError(f"checkpoint '{checkpoint}': no exporter for kind '{ckpt['kind']}' "
                         f"(known: {', '.join(exporter_kinds())})")
    return export_loaded(ckpt, out, source=checkpoint.name, source_sha256=file_sha256(checkpoint),
                         opset=opset, exporter=exporter, output=output, size=size, verify=verify,
                         quantize=quantize, calibration=calibration, calibration_n=calibration_n)


def export_loaded(ckpt: dict[str, Any], out: str | os.PathLike[str], *, source: str,
                  source_sha256: str, opset: int | None = None, exporter: str = "auto",
                  output: str = "probabilities", size: int | None = None, verify: bool = True,
                  quantize: str | None = None,
                  calibration: str | os.PathLike[str] | None = None, calibration_n: int = 64,
                  spec_fn: Exporter | None = None) -> ExportResult:
    """:func:`export_checkpoint` of a checkpoint dict already in memory.

    Args:
        source, source_sha256: provenance recorded in the metadata (``source_checkpoint``).
        spec_fn: the exporter (default: the one registered for ``ckpt["kind"]``), e.g. the
            fold ensemble's, which is no checkpoint kind on disk.
        (the rest as :func:`export_checkpoint`)
    """
    start = time.monotonic()
    out = Path(out)
    if exporter not in EXPORTERS:
        raise HpatkError(f"exporter must be one of {', '.join(EXPORTERS)}, not '{exporter}'")
    if output not in ("probabilities", "logits"):
        raise HpatkError(f"output must be 'probabilities' or 'logits', not '{output}'")
    if out.is_dir():
        raise HpatkError(f"--out '{out}' is a folder; give a file name like model.onnx")
    kind = ckpt["kind"]
    if spec_fn is None and kind not in KIND_EXPORTERS:
        raise HpatkError(f"{source}: no exporter for kind '{kind}' "
                         f"(known: {', '.join(exporter_kinds())})")
    spec = (spec_fn or KIND_EXPORTERS[kind])(ckpt, ExportOptions(output=output, size=size))
    spec.module.eval()
    calib = _calibration(quantize, calibration, calibration_n, kind, spec.metadata)
    if verify:  # first: fail fast, before a possibly slow trace
        x, refs = reference_outputs(spec)
    notes: list[str] = []
    if exporter == "auto":
        try:
            exporter, proto = "legacy", _trace(spec, "legacy", opset or DEFAULT_OPSET["legacy"])
        except HpatkError as legacy:
            exporter = "dynamo"
            try:
                proto = _trace(spec, "dynamo", max(opset or 0, DEFAULT_OPSET["dynamo"]))
            except HpatkError as dynamo:
                raise HpatkError(f"{legacy}; and {dynamo}") from dynamo
            notes.append(f"{legacy}; exported with dynamo instead")
    else:
        proto = _trace(spec, exporter, DEFAULT_OPSET[exporter] if opset is None else opset)
    opset = _default_opset(proto)
    meta = {
        "kind": kind, "format": METADATA_FORMAT, **spec.metadata,
        "input_name": spec.input_name, "output_name": spec.output_name,
        "hpatk_version": __version__, "source_checkpoint": source,
        "source_sha256": source_sha256, "exporter": exporter, "opset": opset,
    }
    _set_metadata(proto, meta)
    proto.doc_string = f"hpatk {kind}: {spec.summary}"
    parity = quant = None
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=_parent(out)) as tmp:
            staged = _save(proto, Path(tmp) / out.name)
            del proto  # large models: do not hold two copies while ORT loads one
            _check(staged[0])
            if verify:
                parity = verify_parity(spec, staged[0], x, refs)
            if calib is not None:
                staged, quant = _quantized(staged[0], Path(tmp) / "int8", calib, meta,
                                           calibration)
            files = _move_into_place(staged, out.parent)
    except OSError as exc:  # a full disk: the temporary folder is gone, out untouched
        if is_write_error(exc):
            raise write_error(exc, out) from None
        raise
    return ExportResult(path=out, files=files, kind=kind, exporter=exporter, opset=opset,
                        metadata=meta, summary=spec.summary, parity=parity,
                        seconds=time.monotonic() - start, quantization=quant, notes=notes)


def _calibration(quantize: str | None, data: str | os.PathLike[str] | None, n: int,
                 kind: str, meta: dict[str, Any]) -> np.ndarray | None:
    """Calibration images for ``--quantize`` (read before the export: fail fast)."""
    from hpatk.export.quantize import QUANTIZE, calibration_images

    if quantize is None:
        if data is not None:
            raise HpatkError("--calibration is only used with --quantize int8")
        return None
    if quantize not in QUANTIZE:
        raise HpatkError(f"--quantize must be one of {', '.join(QUANTIZE)}, not '{quantize}'")
    if kind != "classifier":
        raise HpatkError(f"--quantize applies to classifiers, not to a {kind}")
    if data is None:
        raise HpatkError("--quantize int8 needs --calibration DATA (training images: a "
                         "dataset folder or a cache) to calibrate activation ranges")
    if n < 1:
        raise HpatkError(f"--calibration-n must be at least 1, not {n}")
    return calibration_images(data, meta, n=n)


def _quantized(float_path: Path, folder: Path, images: np.ndarray, meta: dict[str, Any],
               source: str | os.PathLike[str] | None) -> tuple[list[Path], dict[str, Any]]:
    """Quantize the checked float model; check the result and compare it with the float."""
    import onnx
    from hpatk.export.quantize import compare_models, quantize_int8

    folder.mkdir()
    dst = folder / float_path.name
    info = quantize_int8(float_path, dst, images, meta["input_name"])
    info.update(compare_models(float_path, dst, images, meta["input_name"], meta["output"],
                               meta["thresholds"]))
    info["calibration_source"] = Path(str(source)).name
    model = onnx.load(str(dst))
    meta["quantization"] = info
    _set_metadata(model, meta)
    onnx.save_model(model, dst)
    _check(dst)
    return [dst], info


# -- the generic steps ------------------------------------------------------------------


def _parent(out: Path) -> Path:
    return make_dirs(out.parent, target=out)


def _trace(spec: ExportSpec, exporter: str, opset: int) -> onnx.ModelProto:
    """Trace ``spec.module`` at batch ``EXPORT_BATCH`` with a dynamic batch axis."""
    import onnx
    import torch

    x = torch.from_numpy(spec.make_inputs(EXPORT_BATCH, 0))
    names = dict(input_names=[spec.input_name], output_names=[spec.output_name])
    spec.module.eval()
    try:
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.onnx.export(spec.module, (x,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=({0: batch},), verbose=False,
                                        optimize=True, external_data=False, **names)
            return program.model_proto
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated upstream; it is chosen deliberately.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX.*")
            torch.onnx.export(spec.module, (x,), buf, dynamo=False, opset_version=opset,
                              dynamic_axes={spec.input_name: {0: "batch"},
                                            spec.output_name: {0: "batch"}},
                              do_constant_folding=True, **names)
        return onnx.load_from_string(buf.getvalue())
    except HpatkError:
        raise
    except Exception as exc:
        raise HpatkError(f"the {exporter} exporter failed at opset {opset}: "
                         f"{typed_line(exc)}") from exc


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, Any]) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(encode_metadata(meta))
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)


def _save(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``proto`` to ``path`` (plus ``path.data`` when over protobuf's 2 GiB)."""
    import onnx

    if proto.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save_model(proto, path)
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise HpatkError(f"onnx.checker rejected the exported model: {first_line(exc)}") from exc


def _move_into_place(staged: list[Path], folder: Path) -> list[Path]:
    """Rename the staged files beside their final names; the .onnx goes last."""
    placed = []
    for src in reversed(staged):  # weights first: the .onnx must never point at nothing
        dst = folder / src.name
        os.replace(src, dst)
        placed.append(dst)
    return placed[::-1]


# -- classifier -------------------------------------------------------------------------


def _build_classifier(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The checkpoint's model in eval mode with its weights (core's builder, as training)."""
    from hpatk.core.checkpoint import build_classifier

    try:
        return build_classifier(ckpt).eval()
    except HpatkError:
        raise
    except Exception as exc:
        raise HpatkError(f"cannot rebuild the classifier from the checkpoint: "
                         f"{typed_line(exc)}") from exc


def classifier_graph(model: torch.nn.Module, mean: list[float], std: list[float],
                     probabilities: bool) -> torch.nn.Module:
    """What an exported classifier computes: normalise, the model, optionally sigmoid.

    Shape:
        images float (B, C, H, W) in [0, 1] -> (B, K) probabilities or logits.
    """
    import torch

    class ClassifierGraph(torch.nn.Module):
        """images float (B, C, H, W) in [0, 1] -> normalise -> model (-> sigmoid)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = self.model((images - self.mean) / self.std)
            return torch.sigmoid(logits) if probabilities else logits

    return ClassifierGraph().eval()


def image_inputs(n: int, seed: int, mean: list[float], std: list[float],
                 size: int) -> np.ndarray:
    """Varied float32 (n, C, S, S) images in [0, 1]: noise at the training statistics,
    smooth blobs like cells, and uniform noise (in-distribution and beyond)."""
    rng = np.random.default_rng(seed)
    c = len(mean)
    mu = np.asarray(mean, np.float64)[:, None, None]
    sd = np.asarray(std, np.float64)[:, None, None]
    out = np.empty((n, c, size, size), np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            img = mu + sd * rng.standard_normal((c, size, size))
        elif kind == 1:  # low-frequency structure, like cells
            cell = max(size // 8, 1)
            grid = rng.random((c, size // cell + 1, size // cell + 1))
            big = np.repeat(np.repeat(grid, cell, axis=1), cell, axis=2)[:, :size, :size]
            img = mu + 3 * sd * (big - 0.5) + 0.2 * sd * rng.standard_normal(big.shape)
        else:
            img = rng.random((c, size, size))
        out[i] = np.clip(img, 0.0, 1.0)
    return out


def _require(ckpt: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = ckpt.get(key)
    if not isinstance(value, kind):
        raise HpatkError(f"checkpoint has no valid '{key}' (got {type(value).__name__})")
    return value


@register_exporter("classifier")
def classifier_spec(ckpt: dict[str, Any], options: ExportOptions) -> ExportSpec:
    """Classifier: images float (B, C, S, S) in [0, 1] -> probabilities or logits (B, K)."""
    model_cfg = _require(ckpt, "model", dict)
    classes = [int(c) for c in _require(ckpt, "classes", (list, tuple))]
    names = [str(n) for n in _require(ckpt, "class_names", (list, tuple))]
    stains = [str(s) for s in _require(ckpt, "stains", (list, tuple))]
    enhance = dict(_require(ckpt, "enhance", dict))
    norm = _require(ckpt, "normalize", dict)
    thresholds = ckpt.get("thresholds")
    k, c = int(model_cfg.get("num_classes", -1)), int(model_cfg.get("in_chans", -1))
    problems = [
        (len(classes) == k, f"'classes' has {len(classes)} entries for {k} outputs"),
        (len(names) == k, f"'class_names' has {len(names)} entries for {k} outputs"),
        (len(stains) == c, f"'stains' has {len(stains)} entries for {c} input channels"),
        (all(len(norm.get(x) or ()) == c for x in ("mean", "std")),
         f"'normalize' needs {c} means and stds"),
        (all(float(s) > 0 for s in norm.get("std") or ()), "'normalize' std must be > 0"),
        (thresholds is None or len(thresholds) == k, f"'thresholds' must have {k} values"),
        ("name" in enhance, "'enhance' has no name"),
    ]
    for ok, message in problems:
        if not ok:
            raise HpatkError(f"checkpoint: {message}")
    trained = int(_require(ckpt, "size", int))
    size = int(options.size or trained)
    if size < 8:
        raise HpatkError(f"--size must be at least 8, not {size}")
    mean = [float(v) for v in norm["mean"]]
    std = [float(v) for v in norm["std"]]
    probabilities = options.output == "probabilities"
    graph = classifier_graph(_build_classifier(ckpt), mean, std, probabilities)
    meta = {
        "classes": classes, "class_names": names,
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "stains": stains, "input_size": size, "trained_size": trained, "enhance": enhance,
        "normalize": {"mean": mean, "std": std}, "output": options.output,
        "backbone": str(model_cfg.get("backbone", "")),
        "labels_per_image": ckpt.get("labels_per_image"),  # of the training data
    }
    return ExportSpec(
        module=graph, input_name="images", output_name=options.output,
        make_inputs=lambda n, seed: image_inputs(n, seed, mean, std, size), metadata=meta,
        summary=f"{meta['backbone']} classifier, {c} stains x {size} px -> {k} "
                f"{options.output}",
        degenerate=lambda y: degenerate_outputs(y, saturating=probabilities))


# -- generator --------------------------------------------------------------------------


@register_exporter("generator")
def generator_spec(ckpt: dict[str, Any], options: ExportOptions) -> ExportSpec:
    """Generator: noise float (B, latent_dim) [then labels (B, K) for a conditional one,
    concatenated: (B, latent_dim + K)] -> images float (B, C, S, S) in [0, 1].

    The synthesizer is rebuilt through the registry from the checkpoint's name and
    parameters (export never imports a plugin)."""
    from hpatk.core.generator import GENERATOR_FORMAT, build_synthesizer

    if int(ckpt.get("format", 0)) != GENERATOR_FORMAT or "synthesizer" not in ckpt:
        raise HpatkError(f"generator checkpoint has format {ckpt.get('format')}; this hpatk "
                         f"exports format {GENERATOR_FORMAT} (retrain with hpatk gan train)")
    if options.output != "probabilities":
        raise HpatkError("--logits applies to classifiers only")
    name = str(ckpt["synthesizer"])
    synth = build_synthesizer(name, dict(ckpt.get("params") or {}))
    try:
        synth.load_state_dict(ckpt["state_dict"])
        module = synth.export_module().cpu().eval()
    except HpatkError:
        raise
    except Exception as exc:
        raise HpatkError(f"cannot rebuild synthesizer '{name}' from the checkpoint: "
                         f"{typed_line(exc)}") from exc
    size = synth.image_size
    if options.size not in (None, size):
        raise HpatkError(f"--size: a generator's size is fixed by its checkpoint ({size} px)")
    classes = [int(c) for c in ckpt.get("classes") or []]
    latent = synth.latent_dim
    labels = 0 if synth.per_class else len(classes)
    stains = [str(s) for s in ckpt.get("stains") or ()]
    names = [str(n) for n in ckpt.get("class_names") or ()]
    meta = {
        "synthesizer": name, "classes": classes, "class_names": names,
        "class_index": classes[0] if labels == 0 and len(classes) == 1 else None,
        "class_name": names[0] if labels == 0 and len(names) == 1 else None,
        "stains": stains, "image_size": size, "latent_dim": latent, "label_dim": labels,
        "channels": len(stains), "enhance": ckpt.get("enhance"), "output_range": "[0, 1]",
        "input": (f"noise (B, {latent}) ~ N(0, 1)" if not labels else
                  f"noise (B, {latent}) ~ N(0, 1) then labels (B, {labels}) in {{0, 1}}, "
                  f"concatenated: (B, {latent + labels})"),
    }

    def inputs(n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, latent)).astype(np.float32)
        y = (rng.random((n, labels)) < 0.5).astype(np.float32)
        return np.concatenate([z, y], axis=1)

    what = (f"class {classes[0]} {meta['class_names'][0]!r}" if labels == 0 and classes
            else f"classes {classes}")
    return ExportSpec(
        module=module, input_name="noise", output_name="images", make_inputs=inputs,
        metadata=meta,
        summary=f"{name} generator for {what}, noise {latent}"
                f"{f' + labels {labels}' if labels else ''} -> {len(stains)} x {size} px")
