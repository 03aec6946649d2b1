"""ONNX Runtime inference for exported hpatk models: checked loading, provider choice
and reporting, and :class:`OnnxClassifier` for serving.

A model file is checked before ONNX Runtime sees it: it must parse (a truncated file
does not), keep any external weights inside its own folder, carry hpatk metadata of the
expected kind, and have the input/output shapes its metadata describes.

onnxruntime-gpu falls back to the CPU silently when CUDA or TensorRT cannot load; the
providers that actually run come from ``session.get_providers()`` and a fallback is
reported (or, with ``strict``, refused).
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.errors import HpatkError
from hpatk.core.tta import tta_axes
from hpatk.export.metadata import decode_metadata, validate_metadata

if TYPE_CHECKING:
    import onnx
    import onnxruntime

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
CPU, CUDA, TENSORRT = ("CPUExecutionProvider", "CUDAExecutionProvider",
                       "TensorrtExecutionProvider")
_CHAINS = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}


# -- providers --------------------------------------------------------------------------


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU (a device node of the driver, or WSL's
    GPU), without loading CUDA: a CPU-only machine with onnxruntime-gpu installed has
    none, and ``auto`` then does not try (and fail) to load CUDA."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def requested_providers(provider: str = "auto") -> list[str]:
    """The execution providers to ask ONNX Runtime for, best first.

    ``auto`` asks for CUDA when this onnxruntime build has it and a GPU is present (it
    may still fail to load), else the CPU; ``tensorrt`` falls back through CUDA to the
    CPU.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise HpatkError(f"--provider must be one of {', '.join(PROVIDERS)}, not '{provider}'")
    if provider == "auto":
        cuda = CUDA in ort.get_available_providers() and gpu_present()
        return [CUDA, CPU] if cuda else [CPU]
    return list(_CHAINS[provider])


@dataclass(frozen=True)
class ProviderReport:
    """Which providers were asked for, which run, and why an accelerator did not load."""

    provider: str  # the user's choice: auto, cpu, cuda or tensorrt
    requested: tuple[str, ...]
    active: tuple[str, ...]
    reason: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """Requested accelerators that are not running."""
        return tuple(p for p in self.requested if p != CPU and p not in self.active)

    @property
    def fell_back(self) -> bool:
        return bool(self.missing)

    def describe(self) -> str:
        """One or two lines for the user."""
        line = f"ONNX Runtime providers: {', '.join(self.active)}"
        if self.fell_back:
            why = f" ({self.reason})" if self.reason else ""
            level = "note" if self.provider == "auto" else "warning"
            line += (f"\n{level}: {', '.join(self.missing)} requested (--provider "
                     f"{self.provider}) but not loaded{why}; running on {self.active[0]}")
        return line


def session_options(threads: int | None = None) -> onnxruntime.SessionOptions:
    """Session options: full graph optimisation, no thread spinning (MEASURED.md:
    spinning slowed torch work right after ``run`` by up to 1.5x), ``threads`` intra-op
    threads (default: hpatk's thread count, :func:`hpatk.core.threads.thread_count`)."""
    import onnxruntime as ort
    from hpatk.core.threads import thread_count

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or thread_count())
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def create_session(path: str | os.PathLike[str], provider: str = "auto", *,
                   threads: int | None = None,
                   strict: bool = False) -> tuple[onnxruntime.InferenceSession, ProviderReport]:
    """An ONNX Runtime session on ``path`` and a report of the providers that run.

    Args:
        provider: ``auto``, ``cpu``, ``cuda`` or ``tensorrt``.
        threads: intra-op threads (default: :func:`hpatk.core.threads.thread_count`).
        strict: fail when a requested accelerator (cuda, tensorrt) did not load.

    Raises:
        HpatkError: ONNX Runtime cannot load the model, or ``strict`` and a fallback.
    """
    import onnxruntime as ort

    chain = requested_providers(provider)
    available = set(ort.get_available_providers())
    usable = [p for p in chain if p in available]
    log: list[str] = []
    try:
        if usable == [CPU]:
            session = ort.InferenceSession(str(path), session_options(threads), providers=usable)
        else:  # a failing accelerator logs natively to fd 2: capture it to name the cause
            with _native_output(log):
                session = ort.InferenceSession(str(path), session_options(threads),
                                               providers=usable)
    except Exception as exc:
        raise HpatkError(f"ONNX Runtime cannot load '{path}': {_ort_message(exc)}") from None
    active = tuple(session.get_providers())
    reason = None
    not_built = [p for p in chain if p not in available]
    if not_built:
        reason = f"this onnxruntime build has no {', '.join(not_built)}"
    elif any(p not in active for p in usable if p != CPU):
        reason = _load_failure(log)
    elif log:  # nothing failed: pass on what ONNX Runtime said
        print("\n".join(log), file=sys.stderr)
    report = ProviderReport(provider, tuple(chain), active, reason)
    if strict and report.fell_back and provider != "auto":
        raise HpatkError(f"--strict: {', '.join(report.missing)} requested but not loaded "
                         f"({reason or 'unknown reason'}); refusing to fall back to {active[0]}")
    return session, report


@contextlib.contextmanager
def _native_output(lines: list[str]) -> Iterator[None]:
    """Collect what native code writes to fd 2 (and Python prints) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    buf = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf):  # onnxruntime prints its EP retries
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace") + buf.getvalue()
            lines.extend(_clean(line) for line in text.splitlines() if line.strip())


def _clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def _ort_message(exc: BaseException) -> str:
    """The gist of an ONNX Runtime exception, without its C++ location and signature."""
    text = (_clean(str(exc)).splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\)\s+(?=\S)", "", text)
    return text.strip()[:300] or type(exc).__name__


def _load_failure(log: list[str]) -> str:
    """The most telling line of ONNX Runtime's log about a provider that did not load."""
    for pattern in (r"Failed to load library (\S+) with error: (.*)", r"FAIL : (.*)",
                    r"(Failed to create \w+.*?)(?: Please|$)", r"\[E:onnxruntime[^\]]*\] (.*)"):
        for line in log:
            m = re.search(pattern, line)
            if m:
                if m.lastindex == 2:
                    return f"{Path(m.group(1)).name}: {m.group(2).strip()}"[:300]
                return m.group(1).strip()[:300]
    return "ONNX Runtime gave no reason"


# -- checked loading --------------------------------------------------------------------


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in a graph: initializers and attribute tensors, recursively."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _check_external_data(model: onnx.ModelProto, path: Path) -> bool:
    """External weights must be plain files inside the model's folder, large enough.

    Returns:
        Whether the model has external weights.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = path.resolve().parent
    external = False
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        info = ExternalDataInfo(tensor)
        loc = info.location or ""
        target = (folder / loc).resolve()
        if not loc or os.path.isabs(loc) or not target.is_relative_to(folder):
            raise HpatkError(f"'{path}': tensor '{tensor.name}' keeps its weights at '{loc}', "
                             f"outside the model's folder; refusing to load it")
        if not target.is_file():
            raise HpatkError(f"'{path}': weights file '{loc}' of tensor '{tensor.name}' is "
                             f"missing")
        end = (info.offset or 0) + (info.length or 0)
        if end > target.stat().st_size:
            raise HpatkError(f"'{path}': weights file '{loc}' is truncated ({end} bytes "
                             f"needed, {target.stat().st_size} present)")
    return external


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external weight files a checked model refers to (beside it), sorted.

    Raises:
        HpatkError: as :func:`check_model_file`.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    model = check_model_file(path)
    folder = Path(path).resolve().parent
    return sorted({folder / ExternalDataInfo(t).location for t in _tensors(model.graph)
                   if t.data_location == onnx.TensorProto.EXTERNAL})


def check_model_file(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse and check an ONNX file without loading external weights.

    Returns:
        The ``ModelProto`` (external tensors left as references).

    Raises:
        HpatkError: missing, truncated or corrupt file, external weights outside its
            folder or missing, or a graph ``onnx.checker`` rejects.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise HpatkError(f"model '{path}' does not exist")
    if path.stat().st_size == 0:
        raise HpatkError(f"model '{path}' is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise HpatkError(f"model '{path}' is not a readable ONNX file (truncated or corrupt?): "
                         f"{_clean(str(exc)).splitlines()[0] if str(exc) else ''}") from None
    if not model.graph.node:
        raise HpatkError(f"model '{path}' is not a readable ONNX file (no graph)")
    external = _check_external_data(model, path)
    try:  # by path when weights live beside it: the checker resolves them from its folder
        onnx.checker.check_model(str(path) if external else model)
    except Exception as exc:
        raise HpatkError(f"model '{path}' is not a valid ONNX model: "
                         f"{_clean(str(exc)).splitlines()[0]}") from None
    return model


def read_metadata(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """The hpatk metadata of an exported model (checked; see :mod:`hpatk.export.metadata`)."""
    model = check_model_file(path)
    return _metadata(model, Path(path), kind)


def _metadata(model: onnx.ModelProto, path: Path, kind: str | None) -> dict[str, Any]:
    props = [(p.key, p.value) for p in model.metadata_props]
    return validate_metadata(decode_metadata(props, f"model '{path}'"), f"model '{path}'", kind)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


class OnnxModel:
    """A checked hpatk ONNX model and its ONNX Runtime session.

    Attributes:
        metadata: the hpatk metadata (dict).
        report: the :class:`ProviderReport`.
    """

    kind: str | None = None

    def __init__(self, path: str | os.PathLike[str], provider: str = "auto", *,
                 threads: int | None = None, strict: bool = False) -> None:
        self.path = Path(path)
        model = check_model_file(self.path)
        self.metadata = _metadata(model, self.path, self.kind)
        self.input_name = self.metadata["input_name"]
        self.output_name = self.metadata["output_name"]
        self._check_io(model)
        del model
        self.session, self.report = create_session(self.path, provider, threads=threads,
                                                   strict=strict)

    @property
    def providers(self) -> list[str]:
        """The execution providers that actually run, best first."""
        return list(self.session.get_providers())

    def _expected_io(self) -> tuple[list[int | None], list[int | None]]:
        raise NotImplementedError

    def _check_io(self, model: onnx.ModelProto) -> None:
        want_in, want_out = self._expected_io()
        for what, infos, name, want in (("input", model.graph.input, self.input_name, want_in),
                                        ("output", model.graph.output, self.output_name,
                                         want_out)):
            info = next((i for i in infos if i.name == name), None)
            if info is None:
                raise HpatkError(f"model '{self.path}' has no {what} '{name}' although its "
                                 f"metadata names it")
            dims = _dims(info)
            ok = len(dims) == len(want) and all(
                w is None or d == w for d, w in zip(dims, want, strict=False))
            if not ok or isinstance(dims[0], int) and dims[0] != 0:
                shown = ["batch" if w is None else w for w in want]
                raise HpatkError(f"model '{self.path}': {what} '{name}' has shape {dims}; its "
                                 f"metadata says {shown} with a dynamic batch axis")

    def run(self, x: np.ndarray) -> np.ndarray:
        """The graph's raw output for one prepared batch (float32, the model's input)."""
        return self.session.run([self.output_name], {self.input_name: x})[0]


@dataclass(frozen=True)
class Prediction:
    """Probabilities and thresholded labels of a batch.

    Shape:
        probs: (B, K) float32, columns in ``classes`` order.
        labels: B lists of class indices (the 28-class numbering), at least one each.
        names: the same as class names.
    """

    probs: np.ndarray
    labels: list[list[int]]
    names: list[list[str]]


class OnnxClassifier(OnnxModel):
    """Serve an exported classifier.

    ``predict`` accepts raw stains, uint8 (B, C, H, W) or a list of uint8 (C, H, W) of any
    size (enhanced and resized with the model's recorded enhancement, exactly as the
    cache and ``hpatk predict`` do), or preprocessed float (B, C, S, S) in [0, 1].

    Example:
        >>> clf = OnnxClassifier("model.onnx", provider="cpu")
        >>> pred = clf.predict(images)          # uint8 (B, 4, 512, 512)
        >>> pred.probs.shape, pred.labels[0]    # ((B, 28), [0, 25])
    """

    kind = "classifier"

    def __init__(self, path: str | os.PathLike[str], provider: str = "auto", *,
                 threads: int | None = None, strict: bool = False) -> None:
        super().__init__(path, provider, threads=threads, strict=strict)
        meta = self.metadata
        self.classes: list[int] = list(meta["classes"])
        self.class_names: list[str] = list(meta["class_names"])
        self.stains: list[str] = list(meta["stains"])
        self.size: int = int(meta["input_size"])
        t = meta["thresholds"]
        # Without tuned thresholds (training recorded none) 0.5 is the neutral choice.
        self.thresholds = np.asarray(t if t is not None else [0.5] * len(self.classes),
                                     np.float32)
        self._enhancer: Any = None

    def _expected_io(self) -> tuple[list[int | None], list[int | None]]:
        meta = self.metadata
        return ([None, len(meta["stains"]), meta["input_size"], meta["input_size"]],
                [None, len(meta["classes"])])

    @property
    def enhancer(self) -> Any:
        """The enhancer recorded in the metadata (built from the registry on first use)."""
        if self._enhancer is None:
            from hpatk.core.errors import RegistryError
            from hpatk.core.preprocess import make_enhancer

            try:
                self._enhancer = make_enhancer(self.metadata["enhance"])
            except RegistryError as exc:  # an enhancer this installation lacks
                raise RegistryError(f"model '{self.path}' was cached with an enhancer this "
                                    f"installation cannot build: {exc}") from None
        return self._enhancer

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Raw uint8 stains (C, H, W) -> enhanced, resized uint8 (C, S, S)."""
        from hpatk.core.preprocess import preprocess

        self._check_channels(image.shape[0] if image.ndim == 3 else -1, image.shape)
        return preprocess(image, self.enhancer, self.size)

    def _check_channels(self, c: int, shape: tuple[int, ...]) -> None:
        if c != len(self.stains):
            raise HpatkError(f"images of shape {tuple(shape)}: this model takes "
                             f"{len(self.stains)} stains ({', '.join(self.stains)}) as "
                             f"(B, {len(self.stains)}, H, W)")

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """The model's input, float32 (B, C, S, S) in [0, 1], from raw or preprocessed images."""
        if isinstance(images, (list, tuple)):
            raw = [np.asarray(im) for im in images]
            if any(im.dtype != np.uint8 or im.ndim != 3 for im in raw):
                raise HpatkError("a list of images must hold uint8 (C, H, W) arrays")
            return self.to_float(np.stack([self.preprocess(im) for im in raw])
                                  if raw else np.zeros((0, len(self.stains), self.size,
                                                        self.size), np.uint8))
        x = np.asarray(images)
        if x.ndim != 4:
            raise HpatkError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
        self._check_channels(x.shape[1], x.shape)
        if x.dtype == np.uint8:
            return self.to_float(np.stack([self.preprocess(im) for im in x]) if len(x) else
                                  np.zeros((0, x.shape[1], self.size, self.size), np.uint8))
        if not np.issubdtype(x.dtype, np.floating):
            raise HpatkError(f"images must be uint8 (raw stains) or float in [0, 1], "
                             f"not {x.dtype}")
        if x.shape[2:] != (self.size, self.size):
            raise HpatkError(f"float images must be preprocessed to {self.size} x {self.size}, "
                             f"got {x.shape[2]} x {x.shape[3]} (pass uint8 raw stains to "
                             f"have them enhanced and resized)")
        if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise HpatkError(f"float images must lie in [0, 1], got [{x.min():.3g}, "
                             f"{x.max():.3g}] (uint8 / 255)")
        return np.ascontiguousarray(x, dtype=np.float32)

    @staticmethod
    def to_float(images: np.ndarray) -> np.ndarray:
        """uint8 preprocessed images -> float32 / 255, exactly as training converts them."""
        return images.astype(np.float32) / np.float32(255.0)

    def predict_probs(self, images: np.ndarray | Sequence[np.ndarray], *, tta: str = "none",
                      batch_size: int = 16) -> np.ndarray:
        """Probabilities (B, K) float32; ``tta="flips"`` averages the four flips."""
        tta_axes(tta)  # an unknown tta fails before any work
        x = self.prepare(images)
        out = np.empty((len(x), len(self.classes)), np.float32)
        for s in range(0, len(x), max(int(batch_size), 1)):
            out[s:s + batch_size] = self.probs_of(x[s:s + batch_size], tta=tta)
        return out

    def probs_of(self, x: np.ndarray, *, tta: str = "none") -> np.ndarray:
        """Probabilities of one prepared float32 batch (B, C, S, S). ``tta="flips"`` on a
        model exported with the flips in its graph runs it once: the mean over the flips'
        closed set is already its output."""
        axes = tta_axes(tta)
        if self.metadata.get("tta") == "flips":
            axes = ((),)
        total = None
        for a in axes:
            y = self.run(np.ascontiguousarray(np.flip(x, a) if a else x))
            if self.metadata["output"] == "logits":
                y = 1.0 / (1.0 + np.exp(-y))
            total = y if total is None else total + y
        return (total / np.float32(len(axes))).astype(np.float32)

    def labels_of(self, probs: np.ndarray) -> tuple[list[list[int]], list[list[str]]]:
        """Thresholded labels (at least one per image), as class indices and names."""
        from hpatk.core.metrics import apply_thresholds

        pred = apply_thresholds(probs, self.thresholds, at_least_one=True)
        cols = [np.flatnonzero(row) for row in pred]
        return ([[self.classes[j] for j in c] for c in cols],
                [[self.class_names[j] for j in c] for c in cols])

    def predict(self, images: np.ndarray | Sequence[np.ndarray], *, tta: str = "none",
                batch_size: int = 16) -> Prediction:
        """Probabilities and labels for a batch (see the class docstring for inputs)."""
        probs = self.predict_probs(images, tta=tta, batch_size=batch_size)
        labels, names = self.labels_of(probs)
        return Prediction(probs, labels, names)


class OnnxGenerator(OnnxModel):
    """Sample an exported generator: noise (B, latent) [then labels (B, K) for a
    conditional one, concatenated] -> images (B, C, S, S) in [0, 1]."""

    kind = "generator"

    def _expected_io(self) -> tuple[list[int | None], list[int | None]]:
        meta = self.metadata
        c = int(meta.get("channels", len(meta["stains"])))
        width = int(meta["latent_dim"]) + int(meta.get("label_dim") or 0)
        return ([None, width], [None, c, meta["image_size"], meta["image_size"]])

    def sample(self, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """``n`` images, float32 (n, C, S, S) in [0, 1]; a conditional generator needs
        ``labels`` (n, K) over its ``classes`` (metadata)."""
        k = int(self.metadata.get("label_dim") or 0)
        z = np.random.default_rng(seed).standard_normal((n, int(self.metadata["latent_dim"])))
        if k:
            if labels is None or np.shape(labels) != (n, k):
                raise HpatkError(f"this generator is conditional: sample({n}) needs labels of "
                                 f"shape ({n}, {k}) over classes {self.metadata['classes']}")
            z = np.concatenate([z, np.asarray(labels, np.float64)], axis=1)
        return self.run(z.astype(np.float32))
