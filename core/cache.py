"""The HDF5 dataset cache: decode, enhance and resize once; read at memory speed.

Format (``format_version`` 1), one HDF5 file::

    /images     uint8 (N, C, S, S), one chunk per image, uncompressed by default
    /labels     uint8 (N, 28) multi-hot
    /ids        str (N,)        sample Ids
    /source     str (N,)        "kaggle" or "external"
    /inputs     str (L,)        the input listing the fingerprint covers (for "what changed")
    /synthetic/batch-000001/    one group per add_synthetic call
        images  uint8 (n, C, S, S)    labels uint8 (n, 28)
        attrs   class_index, class_name, generator, fold (-1 = none), seed, n, created
    root attrs  format, format_version, fingerprint, config (JSON: enhance, size, stains,
                format and preprocess versions), inputs (JSON summary), enhance (JSON),
                size, stains (JSON), compression, hpatk_version, opencv_version, created

Safety: a build writes a temporary file in the destination folder and renames it when
complete, under a lock file (``.NAME.lock``) that also serialises concurrent builders (DDP
ranks) and synthetic writers. ``add_synthetic`` never changes existing objects: it writes
an anonymous group (unreachable until linked; HDF5 frees it if the writer fails) and links
it in one step, so readers see a batch entirely or not at all.

Readers open the file lazily in each process (fork, spawn, forkserver; 0 or N DataLoader
workers) with HDF5 file locking off (``locking=False``, what ``HDF5_USE_FILE_LOCKING=FALSE``
does for other HDF5 tools). Safe, because existing objects are never modified in place
(rebuilds replace the file by rename; readers keep the old inode); needed, because HDF5's
flock makes read-only opens fail on file systems without lock support (NFS, Lustre: many
DDP ranks) and would block a ``gan sample --into`` while training reads. In one process,
open a cache with ``h5py.File(path, "r", locking=False)`` too: HDF5 refuses to open a file
twice with different locking flags.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.classes import CLASS_NAMES, NUM_CLASSES, STAINS
from hpatk.core.errors import DataError, HpatkError

if TYPE_CHECKING:
    import h5py
    import numpy as np
    import torch

FORMAT = "hpatk-cache"
FORMAT_VERSION = 1
# Bump when preprocess() output changes for the same inputs: old caches then rebuild.
PREPROCESS_VERSION = 1
COMPRESSIONS = ("none", "blosc-lz4")
_SYN = "synthetic"
_TASK_IMAGES = 4  # images per worker task: amortises IPC, keeps the writer fed


# ----------------------------------------------------------------------------- helpers
class _NotACache(HpatkError):
    """A readable HDF5 file that hpatk did not write."""


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


def _strings(dset: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dset[()]]


def _h5_reason(exc: BaseException) -> str:
    """The informative part of an h5py error, on one line."""
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _compression_kwargs(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "blosc-lz4":
        import hdf5plugin

        # Byte shuffle is a no-op on uint8; bitshuffle halves read speed (MEASURED.md).
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    raise HpatkError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not "
                     f"'{compression}'")


@contextlib.contextmanager
def _open_h5(path: Path, mode: str = "r") -> Iterator[h5py.File]:
    """Open a cache, turning h5py's deep errors into one line naming the file."""
    f = _open_file(path, mode)
    try:
        yield f
    finally:
        f.close()


def _open_file(path: Path, mode: str = "r") -> h5py.File:
    import h5py

    if not path.exists():
        raise HpatkError(f"{path}: no such cache file")
    try:
        # rdcc_nbytes=0: a chunk is one image read once; the chunk cache only adds a copy.
        f = h5py.File(path, mode, locking=False, rdcc_nbytes=0)
    except OSError as exc:
        raise HpatkError(f"{path}: not a readable HDF5 cache ({_h5_reason(exc)}); rebuild it "
                         f"with 'hpatk cache build'") from None
    try:
        _validate(f, path)
    except BaseException:
        f.close()
        raise
    if str(f.attrs.get("compression", "none")) != "none":
        try:
            import hdf5plugin  # noqa: F401  (registers the blosc filter with HDF5)
        except ImportError as exc:
            f.close()
            raise HpatkError(f"{path}: compressed with {f.attrs['compression']}; "
                             f"pip install hdf5plugin") from exc
    return f


def _validate(f: h5py.File, path: Path) -> None:
    try:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise _NotACache(f"{path}: not an hpatk cache (no '{FORMAT}' format attribute); "
                             f"build one with 'hpatk cache build'")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise HpatkError(f"{path}: cache format {version} is newer than this hpatk "
                             f"understands ({FORMAT_VERSION}); upgrade hpatk or rebuild")
        images, labels, ids = f["images"], f["labels"], f["ids"]
        n = images.shape[0]
        if (images.ndim != 4 or images.dtype.name != "uint8" or labels.shape != (n, NUM_CLASSES)
                or ids.shape != (n,) or f["source"].shape != (n,)):
            raise HpatkError(f"{path}: damaged cache (images {images.shape}, labels "
                             f"{labels.shape}, ids {ids.shape}); rebuild it")
    except HpatkError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise HpatkError(f"{path}: damaged cache ({_h5_reason(exc)}); rebuild it with "
                         f"'hpatk cache build'") from None


@contextlib.contextmanager
def _writer_lock(out: Path, quiet: bool = False) -> Iterator[None]:
    """Exclusive lock on ``.NAME.lock`` beside ``out``: one builder or writer at a time
    (DDP ranks calling ensure_cache together build once; the others then reuse)."""
    import fcntl

    lock_path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise HpatkError(f"{out}: cannot write there ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process writing {out} ...", quiet)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no lock support on this file system: go on unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        os.close(fd)


def _remove_stale_temps(out: Path, quiet: bool) -> None:
    """Partial builds of ``out`` left by a killed process (we hold the writer lock, so
    no live builder owns them)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            _say(f"removed a partial build left by a killed process: {tmp.name}", quiet)


# -------------------------------------------------------------------------- fingerprint
def _read_inputs(data_dir: Path, extra: Sequence[str | os.PathLike[str]]
                 ) -> tuple[list[Any], list[tuple[Path, str, int]]]:
    """Sample refs of the Kaggle train split plus each external folder, and the roots."""
    from hpatk.core.data import read_external, read_kaggle

    refs = list(read_kaggle(data_dir, "train"))
    roots = [(Path(data_dir).resolve(), "kaggle", len(refs))]
    for d in extra:
        more = list(read_external(d))
        refs += more
        roots.append((Path(d).resolve(), "external", len(more)))
    seen: dict[str, int] = {}
    for ref in refs:
        if ref.id in seen:
            raise DataError(f"Id '{ref.id}' appears twice in the inputs (e.g. in {data_dir} "
                            f"and an --extra folder); remove one")
        seen[ref.id] = 1
    if not refs:
        raise DataError(f"{data_dir}: no training images (train.csv is empty)")
    return refs, roots


def _listing(refs: Sequence[Any], roots: Sequence[tuple[Path, str, int]],
             stains: Sequence[str]) -> list[str]:
    """One line per sample (Id, source, labels) and per stain file (path relative to its
    input root, size, mtime in ns): touching, replacing or relabelling anything changes it.
    Relative paths: a dataset folder moved as a whole keeps its cache."""
    lines: list[str] = []
    root_of = [(str(r), k) for k, (r, _, _) in enumerate(roots)]
    where: dict[str, tuple[int, str]] = {}  # folder -> (root number, folder relative to it)

    def locate(folder: str) -> tuple[int, str]:
        if folder not in where:
            real = os.path.realpath(folder)  # once per folder, not per file
            where[folder] = next(((k, os.path.relpath(real, r)) for r, k in root_of
                                  if real == r or real.startswith(r + os.sep)), (-1, real))
        return where[folder]

    for ref in refs:
        labels = " ".join(str(int(c)) for c in ref.labels)
        lines.append(f"row\t{ref.source}\t{ref.id}\t{labels}")
        for p in ref.paths(stains):
            p = os.fspath(p)
            try:
                st = os.stat(p)
            except OSError as exc:
                raise DataError(f"{p}: cannot read ({exc.strerror}) for Id '{ref.id}'") from None
            k, folder = locate(os.path.dirname(os.path.abspath(p)))
            rel = os.path.normpath(os.path.join(folder, os.path.basename(p)))
            lines.append(f"file\t{k}\t{rel}\t{st.st_size}\t{st.st_mtime_ns}")
    return lines


def _config(enhance_cfg: Mapping[str, Any], size: int, stains: Sequence[str]) -> dict[str, Any]:
    return json.loads(_json({"format_version": FORMAT_VERSION,
                             "preprocess_version": PREPROCESS_VERSION,
                             "enhance": dict(enhance_cfg), "size": int(size),
                             "stains": list(stains)}))


def _digest(config: Mapping[str, Any], listing: Sequence[str]) -> str:
    h = hashlib.sha256(_json(config).encode())
    for line in listing:
        h.update(b"\n" + line.encode())
    return h.hexdigest()


def _stale_reason(out: Path, digest: str, config: Mapping[str, Any], listing: Sequence[str],
                  compression: str | None) -> str | None:
    """None when ``out`` is a complete cache of exactly these inputs, else why not."""
    if not out.exists():
        return "no cache yet"
    with open(out, "rb") as fh:
        if fh.read(8) != _HDF5_SIGNATURE:  # never replace a file that is not ours
            raise HpatkError(f"{out} exists and is not an HDF5 cache; choose another --out "
                             f"or pass --force to replace it")
    try:
        with _open_h5(out) as f:
            old_digest = str(f.attrs.get("fingerprint", ""))
            old_cfg = json.loads(str(f.attrs.get("config", "{}")))
            old_comp = str(f.attrs.get("compression", "none"))
            old_listing = _strings(f["inputs"]) if old_digest != digest else []
    except _NotACache:
        raise HpatkError(f"{out} is an HDF5 file hpatk did not write; choose another --out or "
                         f"pass --force to replace it") from None
    except HpatkError as exc:
        return f"the existing file is unusable ({exc})"
    if compression is not None and compression != old_comp:
        return f"compression {old_comp} -> {compression}"
    if old_digest == digest:
        return None
    changed = [f"{k} {old_cfg.get(k)!r} -> {config[k]!r}" for k in config
               if old_cfg.get(k) != config[k]]
    if changed:
        return "; ".join(changed)
    old, new = set(old_listing), set(listing)
    gone, added = sorted(old - new), sorted(new - old)
    if not gone and not added:
        return "the order of the rows changed"
    show = [line.split("\t")[2] for line in (added or gone)[:3]]
    return (f"inputs changed ({len(added)} new or modified entries, {len(gone)} gone or "
            f"modified; e.g. {', '.join(show)})")


# ------------------------------------------------------------------------------- build
def _preprocessed(refs: Sequence[Any], enhance: str, params: dict[str, Any],
                  stains: tuple[str, ...], size: int, workers: int) -> Iterator[np.ndarray]:
    """Preprocessed images, in input order: k (C, S, S) arrays per step."""
    from hpatk.core.preprocess import init_worker, preprocess_refs

    tasks = [refs[i:i + _TASK_IMAGES] for i in range(0, len(refs), _TASK_IMAGES)]
    if workers <= 1 or len(tasks) == 1:
        init_worker(enhance, params, stains, size, None)
        for task in tasks:
            yield preprocess_refs(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn: no inherited cv2/torch thread state (fork + OpenCV deadlocks); a bounded window
    # of tasks in flight keeps memory flat however slow the writer is.
    window = 4 * workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=init_worker,
                             initargs=(enhance, params, stains, size, os.getpid())) as pool:
        pending: list[Any] = []
        it = iter(tasks)
        try:
            for task in it:
                pending.append(pool.submit(preprocess_refs, task))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        except BrokenProcessPool as exc:
            raise HpatkError(f"a cache worker process died ({exc}); rerun with --workers 1 "
                             f"to see the failing image") from None
        finally:
            for fut in pending:
                fut.cancel()


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_cache(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                enhance: str = "clahe", enhance_params: Mapping[str, Any] | None = None,
                size: int = 512, stains: Sequence[str] = STAINS,
                extra: Sequence[str | os.PathLike[str]] = (), workers: int | None = None,
                force: bool = False, compression: str | None = None,
                quiet: bool = False) -> Path:
    """Decode, enhance and resize every training image once, into one HDF5 file.

    Reuses ``out`` when its fingerprint (input listing with sizes and mtimes, labels,
    enhancement config, size, stains, format) matches, and says so; rebuilds otherwise,
    saying why. The file appears at ``out`` only when complete.

    Args:
        data_dir: Kaggle layout folder (``train.csv`` + ``train/``).
        out: the cache file to write.
        enhance: enhancer name in the registry; ``enhance_params`` its keyword arguments.
        size: output side in pixels (``cv2.INTER_AREA`` after enhancement).
        stains: channels, in order.
        extra: HPAv18 folders appended after the Kaggle images (source "external").
        workers: processes decoding in parallel (default: the usable CPUs; 0 or 1: in
            this process). One writer (this process) stores the results in order.
        force: rebuild even when the fingerprint matches.
        compression: "none" (default for new caches) or "blosc-lz4"; None keeps an
            existing cache's.
        quiet: no messages on stderr.

    Returns:
        ``out``.

    Shape:
        images (N, len(stains), size, size) uint8; labels (N, 28) uint8.
    """
    import numpy as np
    from hpatk.core.preprocess import make_enhancer
    from hpatk.core.progress import progress
    from hpatk.core.version import __version__

    data_dir, out = Path(data_dir), Path(out)
    stains = _check_stains(stains)
    if int(size) < 1:
        raise HpatkError(f"--size must be a positive number of pixels, not {size}")
    size = int(size)
    params = dict(enhance_params or {})
    enhancer = make_enhancer(enhance, params)
    enhance_cfg = enhancer.config() if enhancer is not None else {"name": "none"}
    refs, roots = _read_inputs(data_dir, extra)
    config = _config(enhance_cfg, size, stains)
    listing = _listing(refs, roots, stains)
    digest = _digest(config, listing)
    workers = _default_workers() if workers is None else int(workers)

    with _writer_lock(out, quiet):
        _remove_stale_temps(out, quiet)
        reason = "--force" if force else _stale_reason(out, digest, config, listing,
                                                       compression)
        if reason is None:
            _say(f"cache up to date: {out} ({len(refs)} images, {enhance_cfg['name']}, "
                 f"{size} px)", quiet)
            return out
        _say(f"building {out}: {reason}", quiet)
        comp = compression or _existing_compression(out) or "none"
        comp_kw = _compression_kwargs(comp)
        n, c = len(refs), len(stains)
        start = time.monotonic()
        import cv2
        import h5py
        from hpatk.core.io import atomic_path

        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w", locking=False) as f:  # private temp file: no lock
                str_t = h5py.string_dtype()
                f.create_dataset("labels", data=np.stack([_multihot(r.labels, r.id)
                                                          for r in refs]))
                f.create_dataset("ids", data=[r.id for r in refs], dtype=str_t)
                f.create_dataset("source", data=[r.source for r in refs], dtype=str_t)
                f.create_dataset("inputs", data=listing, dtype=str_t)
                f.create_group(_SYN)
                images = f.create_dataset("images", (n, c, size, size), np.uint8,
                                          chunks=(1, c, size, size), **comp_kw)
                row = 0
                steps = _preprocessed(refs, enhance, params, stains, size, workers)
                for block in progress(_images_of(steps), desc=f"cache {out.name}", total=n,
                                      unit="img"):
                    images[row] = block
                    row += 1
                f.attrs.update({
                    "format": FORMAT, "format_version": FORMAT_VERSION,
                    "preprocess_version": PREPROCESS_VERSION, "fingerprint": digest,
                    "config": _json(config),
                    "inputs": _json([{"root": str(r), "source": s, "images": k}
                                     for r, s, k in roots]),
                    "enhance": _json(enhance_cfg), "size": size, "stains": _json(stains),
                    "compression": comp, "hpatk_version": __version__,
                    "opencv_version": cv2.__version__, "h5py_version": h5py.__version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "build_seconds": round(time.monotonic() - start, 1),
                })
            with open(tmp, "rb") as fh:  # durable before it becomes visible
                os.fsync(fh.fileno())
        _say(f"wrote {out}: {n} images {c}x{size}x{size} in {time.monotonic() - start:.1f}s",
             quiet)
    return out


def _existing_compression(out: Path) -> str | None:
    with contextlib.suppress(HpatkError, OSError), _open_h5(out) as f:
        return str(f.attrs.get("compression", "none"))
    return None


def _images_of(steps: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for block in steps:
        yield from block


def _multihot(labels: Iterable[int], sample_id: str) -> np.ndarray:
    import numpy as np

    out = np.zeros(NUM_CLASSES, np.uint8)
    for c in labels:
        if not 0 <= int(c) < NUM_CLASSES:
            raise DataError(f"Id '{sample_id}': class {c} is outside 0..{NUM_CLASSES - 1}")
        out[int(c)] = 1
    return out


def _check_stains(stains: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(stains, str):
        stains = [s.strip() for s in stains.split(",") if s.strip()]
    stains = tuple(str(s) for s in stains)
    bad = [s for s in stains if s not in STAINS]
    if bad or not stains or len(set(stains)) != len(stains):
        raise HpatkError(f"--stains must be distinct names from {','.join(STAINS)}, not "
                         f"'{','.join(stains)}'")
    return stains


def default_cache_path(data_dir: str | os.PathLike[str], *, enhance: str = "clahe",
                       enhance_params: Mapping[str, Any] | None = None, size: int = 512,
                       stains: Sequence[str] | str = STAINS,
                       extra: Sequence[str | os.PathLike[str]] = (),
                       cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`ensure_cache` keeps the cache of a dataset folder: beside it (or in
    ``cache_dir``), named ``DIR.<enhance>-<size>px-<digest>.h5``; the digest covers the
    enhancement config, size, stains and extra folders, so settings never share a file."""
    from hpatk.core.preprocess import make_enhancer

    enhancer = make_enhancer(enhance, enhance_params)
    cfg = enhancer.config() if enhancer is not None else {"name": "none"}
    key = {**_config(cfg, size, _check_stains(stains)),
           "extra": sorted(str(Path(e).resolve()) for e in extra)}
    tag = hashlib.sha256(_json(key).encode()).hexdigest()[:8]
    data_dir = Path(data_dir).resolve()
    folder = Path(cache_dir) if cache_dir is not None else data_dir.parent
    return folder / f"{data_dir.name}.{cfg['name']}-{int(size)}px-{tag}.h5"


def ensure_cache(data: str | os.PathLike[str], *, enhance: str = "clahe",
                 enhance_params: Mapping[str, Any] | None = None, size: int = 512,
                 stains: Sequence[str] = STAINS, cache_dir: str | os.PathLike[str] | None = None,
                 workers: int | None = None, quiet: bool = False) -> Path:
    """A cache for ``data``: an .h5 file is validated and returned as is (its
    :func:`read_cache_meta` says how it was built); a dataset folder gets its cache built
    or reused at :func:`default_cache_path` (the file ``hpatk cache build DIR`` writes).

    Raises:
        HpatkError: a missing path, or a file that is not a readable cache.
    """
    p = Path(data)
    if p.is_dir():
        out = default_cache_path(p, enhance=enhance, enhance_params=enhance_params, size=size,
                                 stains=stains, cache_dir=cache_dir)
        return build_cache(p, out, enhance=enhance, enhance_params=enhance_params, size=size,
                           stains=stains, workers=workers, quiet=quiet)
    if not p.exists():
        raise HpatkError(f"--data '{p}' does not exist")
    with _open_h5(p):
        pass
    return p


# ------------------------------------------------------------------------------ reading
def _meta_of(f: h5py.File, path: Path) -> dict[str, Any]:
    import numpy as np

    images = f["images"]
    a = f.attrs
    sources = _strings(f["source"])
    return {
        "path": str(path),
        "format_version": int(a["format_version"]),
        "fingerprint": str(a["fingerprint"]),
        "enhance": json.loads(str(a["enhance"])),
        "size": int(a["size"]),
        "stains": list(json.loads(str(a["stains"]))),
        "n": int(images.shape[0]),
        "shape": tuple(int(s) for s in images.shape),
        "dtype": str(images.dtype),
        "chunks": tuple(images.chunks) if images.chunks else None,
        "compression": str(a.get("compression", "none")),
        "hpatk_version": str(a.get("hpatk_version", "")),
        "opencv_version": str(a.get("opencv_version", "")),
        "created": str(a.get("created", "")),
        "build_seconds": float(a.get("build_seconds", 0.0)),
        "inputs": json.loads(str(a.get("inputs", "[]"))),
        "config": json.loads(str(a.get("config", "{}"))),
        "sources": {str(s): int(k) for s, k in zip(*np.unique(sources, return_counts=True),
                                             strict=True)},
        "synthetic": _batches(f),
    }


def _batches(f: h5py.File) -> list[dict[str, Any]]:
    """Committed synthetic batches in creation order, with their provenance."""
    out = []
    grp = f.get(_SYN)
    if grp is None:
        return out
    for name in sorted(grp):
        a = grp[name].attrs
        fold = int(a.get("fold", -1))
        out.append({"batch": name, "n": int(grp[name]["images"].shape[0]),
                    "class_index": int(a["class_index"]), "class_name": str(a["class_name"]),
                    "generator": str(a["generator"]), "fold": None if fold < 0 else fold,
                    "seed": int(a["seed"]), "created": str(a.get("created", "")),
                    "hpatk_version": str(a.get("hpatk_version", ""))})
    return out


def read_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How a cache was built: ``enhance`` (config dict), ``size``, ``stains``,
    ``fingerprint``, ``n``, ``shape``, ``compression``, versions, ``inputs``, ``sources``
    (counts) and ``synthetic`` (one provenance dict per batch)."""
    path = Path(path)
    with _open_h5(path) as f:
        try:
            return _meta_of(f, path)
        except (KeyError, OSError, ValueError) as exc:
            raise HpatkError(f"{path}: damaged cache ({_h5_reason(exc)})") from None


def cache_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Labels of the real images. Shape: (N, 28) uint8."""
    with _open_h5(Path(path)) as f:
        return f["labels"][()]


def cache_ids(path: str | os.PathLike[str]) -> list[str]:
    """Ids of the real images, in cache row order."""
    with _open_h5(Path(path)) as f:
        return _strings(f["ids"])


def synthetic_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per synthetic row (the row order of ``CacheDataset(..., synthetic="only")``):
    ``class_index``, ``fold`` (-1 = trained on all data), ``seed`` as int arrays (S,);
    ``generator`` and ``batch`` as lists; ``labels`` (S, 28) uint8."""
    import numpy as np

    with _open_h5(Path(path)) as f:
        batches = _batches(f)
        labels = [f[_SYN][b["batch"]]["labels"][()] for b in batches]
    rep = [b["n"] for b in batches]
    return {
        "class_index": np.repeat([b["class_index"] for b in batches], rep).astype(int),
        "fold": np.repeat([-1 if b["fold"] is None else b["fold"] for b in batches],
                          rep).astype(int),
        "seed": np.repeat([b["seed"] for b in batches], rep).astype(int),
        "generator": [b["generator"] for b in batches for _ in range(b["n"])],
        "batch": [b["batch"] for b in batches for _ in range(b["n"])],
        "labels": (np.concatenate(labels) if labels
                   else np.zeros((0, NUM_CLASSES), np.uint8)),
    }


def _image_offsets(d: h5py.Dataset) -> np.ndarray | None:
    """File offset of each image's bytes where they can be read straight from the file
    (no filters, one chunk per image, every chunk written); None: read through h5py."""
    import numpy as np

    n = d.shape[0]
    if (n == 0 or d.dtype != np.uint8 or d.chunks != (1, *d.shape[1:])
            or d.id.get_create_plist().get_nfilters() != 0):
        return None
    nbytes = int(np.prod(d.shape[1:]))
    offsets = np.full(n, -1, np.int64)
    usable = [True]

    def visit(info: Any) -> None:
        if info.size != nbytes or info.filter_mask != 0:
            usable[0] = False
        else:
            offsets[info.chunk_offset[0]] = info.byte_offset

    try:
        d.id.chunk_iter(visit)  # one pass over the chunk index (HDF5 >= 1.14)
    except (AttributeError, NotImplementedError):
        for i in range(n):
            visit(d.id.get_chunk_info_by_coord((i, 0, 0, 0)))
    return offsets if usable[0] and (offsets >= 0).all() else None


# Readers of this process, closed before this process writes the same file (HDF5 refuses
# to open a file read-write while the same process has it open read-only).
_READERS: weakref.WeakSet[CacheDataset] = weakref.WeakSet()
# Handles inherited through fork: kept referenced, never closed, so the child does not
# touch the parent's HDF5 state.
_INHERITED: list[Any] = []


def _torch_dataset_base() -> type:
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return object
    return Dataset


class CacheDataset(_torch_dataset_base()):  # type: ignore[misc]
    """A ``torch.utils.data.Dataset`` over a cache: ``ds[i] -> (image, target)``.

    The file opens lazily in the process that reads (each DataLoader worker under fork,
    spawn or forkserver; the main process with 0 workers), read-only and unlocked (see
    the module docstring). Reads are contiguous, never fancy-indexed: uncompressed images
    are read straight from the file at their chunk offsets (``pread``: no h5py lock, one
    copy), compressed ones through h5py in sorted runs of slices. A batch is one call
    (``__getitems__`` for DataLoader's default fetcher; ``ds[list]`` for
    :func:`cache_loader`). Keep batches uint8 and normalise on the training device: float
    batches cost 4x the inter-process bytes.

    Args:
        path: the cache file.
        indices: rows to expose, in this order (e.g. a fold's training rows): real rows,
            or with ``synthetic="only"`` synthetic rows.
        synthetic: False (real images only, the default), "with" (real then synthetic) or
            "only". True means "with".
        as_float: images as float32 in [0, 1] instead of uint8.
        classes: label columns of the target, in order (e.g. ``TOP5``); None = all 28.
        synthetic_indices: synthetic rows to expose with ``"with"`` (default: all). Synthetic
            rows are numbered as in :func:`synthetic_info`.
        synthetic_fold: keep only synthetic samples whose generator trained on this fold.

    Attributes:
        labels: (len, 28) uint8 of the exposed rows. ids, sources: lists (len,).
        meta: :func:`read_cache_meta` of the file. batches: the synthetic batches used.

    Shape:
        image: (C, S, S) uint8 (or float32); target: (K,) float32. ``ds[list_of_indices]``
        returns a whole batch: (B, C, S, S), (B, K).
    """

    def __init__(self, path: str | os.PathLike[str], indices: Sequence[int] | None = None, *,
                 synthetic: bool | str = False, as_float: bool = False,
                 classes: Sequence[int] | None = None,
                 synthetic_indices: Sequence[int] | None = None,
                 synthetic_fold: int | None = None) -> None:
        import numpy as np

        if synthetic is True:
            synthetic = "with"
        if synthetic not in (False, None, "with", "only"):
            raise HpatkError(f"synthetic must be False, 'with' or 'only', not {synthetic!r}")
        if synthetic == "only" and indices is not None and synthetic_indices is not None:
            raise HpatkError("synthetic='only': give the rows as indices or "
                             "synthetic_indices, not both")
        self.path = Path(path)
        self.as_float = bool(as_float)
        self.synthetic = synthetic or False
        with _open_h5(self.path) as f:
            try:
                self.meta = _meta_of(f, self.path)
                batches = self.meta["synthetic"]
                real = (f["labels"][()], _strings(f["ids"]), _strings(f["source"]))
                syn_labels = ([f[_SYN][b["batch"]]["labels"][()] for b in batches]
                              if self.synthetic else [])
            except (KeyError, OSError, ValueError) as exc:
                raise HpatkError(f"{self.path}: damaged cache ({_h5_reason(exc)})") from None
        self.segments = ["images"] + [f"{_SYN}/{b['batch']}/images" for b in batches]
        keys, rows, labels, ids, sources = [], [], [], [], []
        if self.synthetic != "only":
            sel = _check_indices(indices, len(real[1]), self.path, "real")
            keys.append(np.zeros(len(sel), np.int32))
            rows.append(sel)
            labels.append(real[0][sel])
            ids += [real[1][i] for i in sel]
            sources += [real[2][i] for i in sel]
        self.batches: list[dict[str, Any]] = []
        if self.synthetic:
            k = np.concatenate([np.full(b["n"], j + 1, np.int32) for j, b in enumerate(batches)]
                               or [np.zeros(0, np.int32)])
            r = np.concatenate([np.arange(b["n"]) for b in batches] or [np.zeros(0, np.int64)])
            lab = np.concatenate(syn_labels or [np.zeros((0, NUM_CLASSES), np.uint8)])
            sel = _check_indices(synthetic_indices if synthetic_indices is not None or
                                 self.synthetic == "with" else indices, len(r), self.path,
                                 "synthetic")
            if synthetic_fold is not None:
                folds = np.array([-1] + [-1 if b["fold"] is None else b["fold"]
                                         for b in batches])
                sel = sel[folds[k[sel]] == int(synthetic_fold)]
            k, r, lab = k[sel], r[sel], lab[sel]
            self.batches = [batches[j - 1] for j in sorted(set(k.tolist()))]
            keys.append(k)
            rows.append(r)
            labels.append(lab)
            ids += [f"{_SYN}/{batches[a - 1]['batch']}/{b}" for a, b in zip(k, r, strict=True)]
            sources += [_SYN] * len(k)
        self._key = np.concatenate(keys).astype(np.int32)
        self._row = np.concatenate(rows).astype(np.int64)
        self.labels: np.ndarray = np.concatenate(labels).astype(np.uint8)
        self.ids: list[str] = ids
        self.sources: list[str] = sources
        self.classes = None if classes is None else [int(c) for c in classes]
        if self.classes is not None and any(not 0 <= c < NUM_CLASSES for c in self.classes):
            raise HpatkError(f"classes {self.classes}: indices must be in 0..{NUM_CLASSES - 1}")
        cols = self.labels if self.classes is None else self.labels[:, self.classes]
        self.targets: np.ndarray = np.ascontiguousarray(cols, dtype=np.float32)
        self._h5: Any = None
        self._fd = -1
        self._segs: dict[int, tuple[Any, np.ndarray | None]] = {}
        self._pid: int | None = None

    # -- process-local handles --------------------------------------------------------
    def _segment(self, key: int) -> tuple[Any, np.ndarray | None]:
        """(h5py dataset, file offset of each image or None) of segment ``key``, opening
        the file first if this process has not."""
        if self._pid != os.getpid():
            if self._h5 is not None:  # inherited through fork: the parent's, leave it be
                _INHERITED.append(self._h5)
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # only this process's copy of the descriptor
            self._h5, self._segs, self._pid = _open_file(self.path), {}, os.getpid()
            direct = hasattr(os, "preadv") and self._h5.userblock_size == 0
            self._fd = os.open(self.path, os.O_RDONLY) if direct else -1
            _READERS.add(self)
        seg = self._segs.get(key)
        if seg is None:
            d = self._h5[self.segments[key]]
            seg = self._segs[key] = (d, _image_offsets(d) if self._fd >= 0 else None)
        return seg

    def _fill(self, out: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> None:
        """Read images (keys[j], rows[j]) into out[j]; contiguous reads only."""
        import numpy as np

        order = np.lexsort((rows, keys))
        s = 0
        while s < len(order):
            key = int(keys[order[s]])
            d, offsets = self._segment(key)
            e = s + 1
            while e < len(order) and keys[order[e]] == key:
                e += 1
            if offsets is not None:
                # Uncompressed: one pread per image, straight into the batch (no h5py
                # lock, GIL released, a single copy from the page cache).
                nbytes = out[0].nbytes
                for j in order[s:e]:
                    if os.preadv(self._fd, [out[j]], int(offsets[rows[j]])) != nbytes:
                        raise OSError(f"short read of {self.segments[key]}[{rows[j]}]: the "
                                      f"file was truncated")
            else:  # through HDF5's filters: sorted runs of rows as slices
                a = s
                while a < e:
                    b = a + 1
                    while b < e and rows[order[b]] == rows[order[b - 1]] + 1:
                        b += 1
                    out[order[a:b]] = d[int(rows[order[a]]):int(rows[order[b - 1]]) + 1]
                    a = b
            s = e

    def close(self) -> None:
        """Close this process's handles; the next read reopens them."""
        if self._pid == os.getpid():
            if self._h5 is not None:
                with contextlib.suppress(Exception):
                    self._h5.close()
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
        self._h5, self._fd, self._segs, self._pid = None, -1, {}, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_h5=None, _fd=-1, _segs={}, _pid=None)  # handles stay in their process
        return state

    def __len__(self) -> int:
        return len(self._key)

    def _tensor(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if self.as_float else images

    def __getitem__(self, i: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        import torch

        if not isinstance(i, (int, np.integer)) and np.ndim(i) == 1:
            return self.read_batch(i)  # the batch_size=None + BatchSampler pattern
        i = int(i)
        n = len(self._key)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        images, _ = self._read([i])
        return self._tensor(images[0]), torch.from_numpy(self.targets[i].copy())

    def _read(self, indices: Sequence[int], shared: bool = False
              ) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 images of ``indices`` (in shared memory with ``shared``) and the rows."""
        import numpy as np
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self._key)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} samples")
        idx = np.where(idx < 0, idx + n, idx)
        shape = (len(idx), *self.meta["shape"][1:])
        if shared:  # what a worker sends: filled in place, handed over without a copy
            nbytes = int(np.prod(shape))
            out = torch.empty(0, dtype=torch.uint8).set_(
                torch.UntypedStorage._new_shared(nbytes)).view(shape)
        else:
            out = torch.empty(shape, dtype=torch.uint8)
        try:
            self._fill(out.numpy(), self._key[idx], self._row[idx])
        except (OSError, KeyError, ValueError) as exc:
            raise HpatkError(f"{self.path}: cannot read images ({_h5_reason(exc)}); the file "
                             f"is damaged: rebuild it") from None
        return out, idx

    def read_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as one batch (``ds[list]`` and ``cache_loader`` use it).

        Shape:
            (B, C, S, S) uint8 (or float32), (B, K) float32.
        """
        import torch
        from torch.utils.data import get_worker_info

        in_worker = get_worker_info() is not None and not self.as_float
        images, idx = self._read(indices, shared=in_worker)
        return self._tensor(images), torch.from_numpy(self.targets[idx])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        images, idx = self._read(indices)  # default_collate stacks into shared memory
        images, targets = self._tensor(images), torch.from_numpy(self.targets[idx])
        return list(zip(images, targets, strict=True))

    def __repr__(self) -> str:
        return (f"CacheDataset('{self.path}', n={len(self)}, synthetic={self.synthetic!r}, "
                f"classes={self.classes})")


def cache_loader(ds: CacheDataset, batch_size: int, *, shuffle: bool = False,
                 sampler: Iterable[int] | None = None, drop_last: bool = False,
                 num_workers: int = 0, generator: torch.Generator | None = None,
                 **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over ``ds`` that reads each batch with one call and hands it over as
    is (``batch_size=None`` + ``BatchSampler``): no per-sample collation, no extra copy.

    Args:
        ds: the dataset.
        batch_size: samples per batch.
        shuffle: random order (``generator`` seeds it); or pass ``sampler`` (e.g. a
            ``DistributedSampler``; call its ``set_epoch`` as usual).
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader worker processes; 0 is often fastest with a cache.
        **kwargs: passed to ``DataLoader`` (``pin_memory``, ``multiprocessing_context``...).

    Shape:
        yields (B, C, S, S) uint8 (float32 with ``as_float``) and (B, K) float32.
    """
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    if sampler is not None and shuffle:
        raise HpatkError("cache_loader: give shuffle=True or a sampler, not both")
    if sampler is None:
        sampler = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, num_workers=num_workers,
                      sampler=BatchSampler(sampler, batch_size, drop_last), **kwargs)


def _check_indices(indices: Sequence[int] | None, n: int, path: Path, what: str) -> np.ndarray:
    import numpy as np

    if indices is None:
        return np.arange(n, dtype=np.int64)
    sel = np.asarray(indices)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise HpatkError(f"{path}: a boolean mask over the {what} rows needs {n} entries")
        return np.flatnonzero(sel)
    sel = sel.astype(np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= n):
        raise HpatkError(f"{path}: indices must be in 0..{n - 1} ({n} {what} rows), got "
                         f"{int(sel.min())}..{int(sel.max())}")
    return sel


# ---------------------------------------------------------------------------- synthetic
def add_synthetic(path: str | os.PathLike[str], images: Any, class_index: int, *,
                  generator: str, fold: int | None, seed: int,
                  labels: np.ndarray | None = None) -> str:
    """Append GAN samples of one class to the cache's synthetic group, atomically.

    The batch is written as an anonymous HDF5 group (unreachable, freed by HDF5 if this
    call fails) and linked as ``synthetic/batch-NNNNNN`` in one final step, under the
    writer lock: readers see the whole batch or none of it, and existing objects are
    never modified. Handles this process holds on the file are closed first (they reopen
    on the next read). A SIGKILL inside HDF5's final metadata flush (milliseconds) is the
    one window HDF5 itself cannot make safe; a killed call otherwise leaves the file as
    it was, at worst with unreachable space (``h5repack`` reclaims it).

    Args:
        path: the cache.
        images: uint8 array (or CPU tensor) matching the cache's channels and size.
        class_index: the class the generator was trained on (0..27).
        generator: where the samples came from (checkpoint path or name).
        fold: the fold whose training rows trained the generator; None = all data.
        seed: the sampling seed.
        labels: multi-hot labels per image; default: ``class_index`` only.

    Returns:
        The batch name.

    Shape:
        images: (n, C, S, S) uint8; labels: (n, 28).
    """
    import h5py
    import numpy as np
    from hpatk.core.version import __version__

    path = Path(path)
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    meta = read_cache_meta(path)
    want = tuple(meta["shape"][1:])
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise HpatkError(f"{path}: synthetic images must be uint8 (n, {', '.join(map(str, want))})"
                         f", got {images.dtype} {tuple(images.shape)}")
    if not 0 <= int(class_index) < NUM_CLASSES:
        raise HpatkError(f"class {class_index} is outside 0..{NUM_CLASSES - 1}")
    n = len(images)
    if labels is None:
        labels = np.zeros((n, NUM_CLASSES), np.uint8)
        labels[:, int(class_index)] = 1
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (n, NUM_CLASSES):
        raise HpatkError(f"synthetic labels must be ({n}, {NUM_CLASSES}), got {labels.shape}")
    _close_readers(path)
    with _writer_lock(path):
        try:
            f = h5py.File(path, "r+", locking=False)
        except OSError as exc:
            raise HpatkError(f"{path}: cannot open for writing ({_h5_reason(exc)})") from None
        try:
            root = f.require_group(_SYN)
            existing = [int(k.split("-")[1]) for k in root if k.startswith("batch-")]
            name = f"batch-{max(existing, default=0) + 1:06d}"
            grp = h5py.Group(h5py.h5g.create(f.id, None))  # anonymous until linked
            grp.create_dataset("images", data=images, chunks=(1, *want),
                               **_compression_kwargs(meta["compression"]))
            grp.create_dataset("labels", data=labels)
            grp.attrs.update({
                "class_index": int(class_index), "class_name": CLASS_NAMES[int(class_index)],
                "generator": str(generator), "fold": -1 if fold is None else int(fold),
                "seed": int(seed), "n": n, "hpatk_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            })
            f.flush()  # the batch's data and headers are on disk before anything links them
            root[name] = grp
            f.flush()
        finally:
            f.close()
    return name


def remove_synthetic(path: str | os.PathLike[str], batches: Iterable[str] | None = None) -> int:
    """Unlink synthetic batches (all when ``batches`` is None); returns how many. HDF5
    does not shrink the file; ``h5repack`` does."""
    import h5py

    path = Path(path)
    read_cache_meta(path)
    _close_readers(path)
    with _writer_lock(path), h5py.File(path, "r+", locking=False) as f:
        root = f.require_group(_SYN)
        names = sorted(root) if batches is None else list(batches)
        for name in names:
            if name not in root:
                raise HpatkError(f"{path}: no synthetic batch '{name}'")
            del root[name]
    return len(names)


def _close_readers(path: Path) -> None:
    for ds in list(_READERS):
        with contextlib.suppress(OSError):
            if ds.path.exists() and os.path.samefile(ds.path, path):
                ds.close()
