"""``hpatk serve``: an exported classifier behind an HTTP API (FastAPI), with dynamic
batching, Prometheus metrics and a web page.

Every request's images go through :func:`hpatk.export.predict.load_image`, the decode ->
enhancement -> resize path of ``hpatk predict``, in a thread pool; the preprocessed
images of concurrent requests are then gathered by one :class:`Batcher` thread into a
single ONNX Runtime call (up to ``max_batch`` images, waiting at most ``max_wait_ms`` for
more), so the event loop never blocks on decoding or inference.

Bad input is answered with a 4xx and one line of JSON naming the field
(``{"error": ..., "field": ...}``); an unexpected failure with a 500 carrying a
correlation id that is logged with the traceback; the server goes on serving.

Needs the ``serve`` extra: ``pip install 'hpatk[serve]'`` (fastapi, uvicorn,
python-multipart, prometheus-client); importing this module without it raises ImportError
(``hpatk serve`` says which package is missing).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from hpatk.core.errors import DataError, HpatkError, first_line

if TYPE_CHECKING:
    from hpatk.export.runtime import OnnxClassifier

log = logging.getLogger("hpatk.serve")

ARRAY_FIELD = "image"  # the multipart field of a .npy/.npz upload
ARRAY_TYPES = ("application/octet-stream", "application/x-npy", "application/x-npz")
PAGE = Path(__file__).with_name("serve_page.html")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServeOptions:
    """Settings of ``hpatk serve`` (the CLI's defaults live here, once).

    Attributes:
        max_batch: most images in one ONNX Runtime call.
        max_wait_ms: how long the first image of a batch waits for more.
        max_request_mb: largest request body accepted (413 beyond).
        workers: threads decoding and enhancing uploads.
        max_pixels: largest stain image (width x height) decoded; a small PNG can
            declare a huge image (a decompression bomb), refused from its header.
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_request_mb: float = 64.0
    workers: int = 2
    max_pixels: int = 8192 * 8192


class BadInput(Exception):
    """A request the server refuses: HTTP ``status`` and the ``field`` at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# -- dynamic batching -------------------------------------------------------------------
@dataclass
class _Job:
    image: np.ndarray  # uint8 (C, S, S), preprocessed
    tta: str
    future: Future
    queued: float


class Batcher:
    """Gathers images submitted from many threads into one ONNX Runtime call.

    One worker thread takes the first waiting image, then collects more until
    ``max_batch`` images or ``max_wait_s`` have passed, runs them (grouped by TTA) with
    :meth:`OnnxClassifier.probs_of` and resolves each image's future with
    ``(probs (K,), info)``. An exception fails only that batch's futures.

    Args:
        on_batch: called as ``on_batch(size, seconds)`` after each ONNX Runtime call.
    """

    def __init__(self, clf: OnnxClassifier, max_batch: int = 16, max_wait_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise HpatkError(f"--max-batch must be at least 1, not {max_batch}")
        if max_wait_s < 0:
            raise HpatkError(f"--max-wait-ms must not be negative, not {max_wait_s * 1e3:g}")
        self.clf, self.max_batch, self.max_wait_s = clf, int(max_batch), float(max_wait_s)
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="hpatk-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, image: np.ndarray, tta: str = "none") -> Future:
        """Queue one preprocessed uint8 (C, S, S) image; the future gives (probs, info)."""
        fut: Future = Future()
        self._queue.put(_Job(image, tta, fut, time.perf_counter()))
        return fut

    def close(self) -> None:
        """Stop the worker after the images already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:  # past the deadline, images already waiting still join
                job = (self._queue.get(timeout=remaining) if remaining > 0
                       else self._queue.get_nowait())
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            for tta in dict.fromkeys(j.tta for j in jobs):
                self._run([j for j in jobs if j.tta == tta], tta)

    def _run(self, jobs: list[_Job], tta: str) -> None:
        start = time.perf_counter()
        try:
            x = self.clf.to_float(np.stack([j.image for j in jobs]))
            probs = self.clf.probs_of(x, tta=tta)
        except BaseException as exc:  # noqa: BLE001 -- handed to the waiting requests
            for j in jobs:
                j.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(jobs), seconds)
        for j, p in zip(jobs, probs, strict=True):
            j.future.set_result((p, {"batch": len(jobs), "queue_ms": (start - j.queued) * 1e3,
                                     "inference_ms": seconds * 1e3}))


# -- request parsing --------------------------------------------------------------------
def read_array(data: bytes, field: str = ARRAY_FIELD) -> np.ndarray:
    """A (C, H, W) array from the bytes of a ``.npy`` or a ``.npz`` file (one array, or
    one named ``image``). Never unpickles.

    Raises:
        BadInput: 422 naming ``field``.
    """
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, zipfile errors, EOFError...
        reason = first_line(exc)[:200]
        raise BadInput(422, f"not a readable .npy/.npz array ({reason})", field) from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        if len(names) != 1 and ARRAY_FIELD not in names:
            raise BadInput(422, f".npz holds {len(names)} arrays ({', '.join(names[:5])}); "
                           f"expected one, or one named '{ARRAY_FIELD}'", field)
        try:
            return loaded[ARRAY_FIELD if ARRAY_FIELD in names else names[0]]
        except Exception as exc:  # an object array needs pickle: refused
            raise BadInput(422, f"not a readable .npz array ({str(exc)[:200]})",
                           field) from None


def check_dimensions(files: Mapping[str, bytes], max_pixels: int) -> None:
    """Refuse an encoded image whose header declares more than ``max_pixels`` pixels,
    before decoding it (Pillow reads the header only; what it cannot read is left to the
    decoder to refuse).

    Raises:
        BadInput: 413 naming the field.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover -- matplotlib brings Pillow
        return
    for field, data in files.items():
        try:
            with warnings.catch_warnings():  # Pillow's own bomb warning: we decide here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
        except Exception:  # noqa: BLE001 -- not an image Pillow knows: the decoder decides
            continue
        if w * h > max_pixels:
            raise BadInput(413, f"image of {w}x{h} px is over the {max_pixels} pixel limit",
                           field)


def _data_error(exc: DataError, default_field: str | None) -> BadInput:
    problem = getattr(exc, "problem", None)
    if problem is not None and problem.stain:
        return BadInput(422, problem.message, problem.stain)
    return BadInput(422, str(exc), default_field)


# -- the app ----------------------------------------------------------------------------
class _Metrics:
    """The Prometheus metrics of one app (its own registry, so apps do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("hpatk_requests", "HTTP requests", ["endpoint", "code"],
                                registry=self.registry)
        self.errors = Counter("hpatk_errors", "Refused or failed predictions", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("hpatk_request_seconds", "Request latency", ["endpoint"],
                                 registry=self.registry)
        self.batch = Histogram("hpatk_batch_size", "Images per ONNX Runtime call",
                               buckets=BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("hpatk_inference_seconds", "Seconds per ONNX Runtime call",
                                   registry=self.registry)
        self.images = Counter("hpatk_images", "Images predicted", registry=self.registry)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)


ERROR_KINDS = {400: "bad_request", 413: "too_large", 415: "unsupported_media_type",
               422: "bad_input", 500: "internal"}


def create_app(clf: OnnxClassifier, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI application serving ``clf``.

    Endpoints: ``POST /v1/predict``, ``GET /v1/metadata``, ``/healthz``, ``/readyz``,
    ``/metrics`` and the web page at ``/``. The batcher thread and the decoding pool stop
    when the app shuts down (its lifespan).
    """
    import contextlib

    from hpatk.core.io import file_sha256
    from hpatk.core.picture import STAIN_COLOURS
    from hpatk.core.tta import TTA

    opts = options or ServeOptions()
    if opts.workers < 1:
        raise HpatkError(f"--workers must be at least 1, not {opts.workers}")
    if opts.max_request_mb <= 0:
        raise HpatkError(f"--max-request-mb must be positive, not {opts.max_request_mb:g}")
    metrics = _Metrics()
    cap = int(opts.max_request_mb * 1024 * 1024)
    stains = list(clf.stains)
    meta = clf.metadata
    model_info = {"name": clf.path.stem, "backbone": meta.get("backbone"),
                  "fingerprint": file_sha256(clf.path), "hpatk_version": meta.get("hpatk_version"),
                  "source_sha256": meta.get("source_sha256"),
                  "int8": bool(meta.get("quantization"))}
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state["pool"] = ThreadPoolExecutor(opts.workers, thread_name_prefix="hpatk-decode")
        state["batcher"] = Batcher(clf, opts.max_batch, opts.max_wait_ms / 1e3,
                                   on_batch=metrics.on_batch)
        try:
            yield
        finally:
            state["batcher"].close()
            state["pool"].shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="hpatk serve", version=str(meta.get("hpatk_version", "")),
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # their pages use a CDN
    app.state.clf, app.state.options, app.state.metrics = clf, opts, metrics

    known = {"/", "/healthz", "/readyz", "/metrics", "/v1/metadata", "/v1/predict"}

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        path = request.url.path if request.url.path in known else "other"
        start = time.perf_counter()
        response = await call_next(request)
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    def refuse(exc: BadInput) -> JSONResponse:
        metrics.errors.labels(ERROR_KINDS.get(exc.status, "bad_request")).inc()
        body = {"error": exc.message.replace("\n", " ")}
        if exc.field is not None:
            body["field"] = exc.field
        return JSONResponse(body, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        batcher = state.get("batcher")
        ready = batcher is not None and batcher.alive
        return JSONResponse({"ready": ready, "providers": clf.providers,
                             "model": model_info["name"]}, status_code=200 if ready else 503)

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        return {"model": model_info, "metadata": meta, "providers": clf.providers,
                "provider_report": clf.report.describe(), "stains": stains,
                "stain_colours": {s: STAIN_COLOURS.get(s) for s in stains},
                "thresholds": clf.thresholds.tolist(), "tta": list(TTA),
                "serve": {"max_batch": opts.max_batch, "max_wait_ms": opts.max_wait_ms,
                          "max_request_mb": opts.max_request_mb, "workers": opts.workers,
                          "max_pixels": opts.max_pixels}}

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        try:
            return await _predict(request, start)
        except BadInput as exc:
            return refuse(exc)
        except Exception:  # one request's failure: logged with its id; the server goes on
            cid = uuid.uuid4().hex[:16]
            log.exception("internal error, correlation id %s", cid)
            metrics.errors.labels("internal").inc()
            return JSONResponse({"error": "internal error (see the server log)",
                                 "correlation_id": cid}, status_code=500)

    async def _predict(request: Request, start: float) -> JSONResponse:
        tta = request.query_params.get("tta", "none")
        if tta not in TTA:
            raise BadInput(400, f"tta must be one of {', '.join(TTA)}, not '{tta[:40]}'", "tta")
        want_composite = request.query_params.get("composite", "") in ("1", "true", "yes")
        source = await _read_upload(request)
        loop = asyncio.get_running_loop()
        t_decode = time.perf_counter()
        image = await loop.run_in_executor(state["pool"], _preprocess, source)
        decode_ms = (time.perf_counter() - t_decode) * 1e3
        probs, info = await asyncio.wrap_future(state["batcher"].submit(image, tta))
        labels, names = clf.labels_of(probs[None])
        body = {"labels": labels[0], "names": names[0], "classes": clf.classes,
                "class_names": clf.class_names, "probabilities": probs.tolist(),
                "thresholds": clf.thresholds.tolist(), "tta": tta, "model": model_info,
                "batch_size": info["batch"],
                "timings_ms": {"decode": round(decode_ms, 3),
                               "queue": round(info["queue_ms"], 3),
                               "inference": round(info["inference_ms"], 3),
                               "total": round((time.perf_counter() - start) * 1e3, 3)}}
        if want_composite:
            body["composite"] = await loop.run_in_executor(state["pool"], _composite_png, image)
        return JSONResponse(body)

    def _preprocess(source: Mapping[str, bytes] | np.ndarray) -> np.ndarray:
        from hpatk.export.predict import load_image

        field = ARRAY_FIELD if isinstance(source, np.ndarray) else None
        try:
            return load_image(clf, source)
        except DataError as exc:
            raise _data_error(exc, field) from None
        except HpatkError as exc:  # the model's own shape checks
            raise BadInput(422, str(exc), field) from None

    def _composite_png(image: np.ndarray) -> str:
        import cv2
        from hpatk.core.picture import composite

        ok, png = cv2.imencode(".png", composite(image, stains)[:, :, ::-1])
        if not ok:  # pragma: no cover
            raise RuntimeError("cv2 could not encode the composite")
        return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()

    async def _read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise BadInput(413, f"request of {int(declared) / 2**20:.1f} MiB is over the "
                           f"{opts.max_request_mb:g} MiB limit (--max-request-mb)", "body")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise BadInput(413, f"request is over the {opts.max_request_mb:g} MiB limit "
                               f"(--max-request-mb)", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_upload(request: Request) -> Mapping[str, bytes] | np.ndarray:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data" and ctype not in ARRAY_TYPES:
            raise BadInput(415, f"content type '{ctype or 'none'}' is not accepted: send "
                           f"multipart/form-data with the stains ({', '.join(stains)}) as "
                           f"files, or one .npy/.npz as application/octet-stream",
                           "content-type")
        body = await _read_body(request)
        if ctype in ARRAY_TYPES:
            if not body:
                raise BadInput(400, "empty request body", ARRAY_FIELD)
            return read_array(body)
        files = await _parse_multipart(request, body)
        if ARRAY_FIELD in files:
            extra = sorted(set(files) - {ARRAY_FIELD})
            if extra:
                raise BadInput(400, f"send either '{ARRAY_FIELD}' or the stains, not both",
                               extra[0])
            return read_array(files[ARRAY_FIELD])
        missing = [s for s in stains if s not in files]
        if missing:
            raise BadInput(400, f"stain '{missing[0]}' is missing (this model takes "
                           f"{', '.join(stains)}, or one .npy/.npz as '{ARRAY_FIELD}')",
                           missing[0])
        check_dimensions(files, opts.max_pixels)
        return files

    async def _parse_multipart(request: Request, body: bytes) -> dict[str, bytes]:
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream() -> Any:
            yield body

        allowed = [*stains, ARRAY_FIELD]
        try:
            form = await MultiPartParser(request.headers, stream(), max_files=len(allowed),
                                         max_fields=len(allowed), max_part_size=cap).parse()
        except MultiPartException as exc:
            raise BadInput(400, f"malformed multipart body: {exc.message}", "body") from None
        try:
            files: dict[str, bytes] = {}
            for name, value in form.multi_items():
                if name not in allowed:
                    raise BadInput(400, f"unknown field '{name[:40]}' (expected "
                                   f"{', '.join(allowed)})", name[:40])
                if not isinstance(value, UploadFile):
                    raise BadInput(400, f"field '{name}' must be a file upload", name)
                if name in files:
                    raise BadInput(400, f"field '{name}' is given twice", name)
                files[name] = await value.read()
            return files
        finally:
            await form.close()

    return app


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          provider: str = "auto", strict: bool = False, threads: int | None = None,
          options: ServeOptions | None = None, log_level: str = "info",
          on_start: Callable[[OnnxClassifier, int], None] | None = None) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted.

    The listening socket is bound here, before the model loads, and handed to uvicorn:
    a taken port is one clear error, nothing can take the port between a check and the
    bind, and ``port=0`` picks a free port that ``on_start`` learns.

    Args:
        on_start: called as ``on_start(classifier, port)`` once the model is loaded, with
            the port really listened on.

    Raises:
        HpatkError: the model cannot be loaded, or the port is taken.
    """
    import socket

    import uvicorn
    from hpatk.export.runtime import OnnxClassifier

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HpatkError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None
    with sock:
        clf = OnnxClassifier(model, provider=provider, threads=threads, strict=strict)
        app = create_app(clf, options)
        bound = int(sock.getsockname()[1])
        if on_start is not None:
            on_start(clf, bound)
        config = uvicorn.Config(app, host=host, port=bound, log_level=log_level,
                                access_log=log_level == "debug", lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
