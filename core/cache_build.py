"""Building a cache (internal; import from :mod:`hpatk.core.cache`): the fingerprint of
the inputs and settings, the freshness check, and the parallel decode-enhance-resize
that writes the file atomically under the writer lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.cache_file import (
    DEFAULT_ENHANCE,
    DEFAULT_SIZE,
    FORMAT,
    FORMAT_VERSION,
    HDF5_SIGNATURE,
    PREPROCESS_VERSION,
    SYN,
    NotACache,
    compression_kwargs,
    json_text,
    open_h5,
    say,
    strings,
    synthetic_batches,
)
from hpatk.core.classes import NUM_CLASSES, STAINS
from hpatk.core.errors import DataError, HpatkError
from hpatk.core.io import remove_stale_temps, stale_temps, writer_lock

if TYPE_CHECKING:
    import numpy as np


_TASK_IMAGES = 4  # images per worker task: amortises IPC, keeps the writer fed


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
    return json.loads(json_text({"format_version": FORMAT_VERSION,
                             "preprocess_version": PREPROCESS_VERSION,
                             "enhance": dict(enhance_cfg), "size": int(size),
                             "stains": list(stains)}))


def _digest(config: Mapping[str, Any], listing: Sequence[str]) -> str:
    h = hashlib.sha256(json_text(config).encode())
    for line in listing:
        h.update(b"\n" + line.encode())
    return h.hexdigest()


def _stale_reason(out: Path, digest: str, config: Mapping[str, Any], listing: Sequence[str],
                  compression: str | None) -> str | None:
    """None when ``out`` is a complete cache of exactly these inputs, else why not."""
    if not out.exists():
        return "no cache yet"
    with open(out, "rb") as fh:
        if fh.read(8) != HDF5_SIGNATURE:  # never replace a file that is not ours
            raise HpatkError(f"{out} exists and is not an HDF5 cache; choose another --out "
                             f"or pass --force to replace it")
    try:
        with open_h5(out) as f:
            old_digest = str(f.attrs.get("fingerprint", ""))
            old_cfg = json.loads(str(f.attrs.get("config", "{}")))
            old_comp = str(f.attrs.get("compression", "none"))
            old_listing = strings(f["inputs"]) if old_digest != digest else []
    except NotACache:
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
    from concurrent.futures.process import BrokenProcessPool

    from hpatk.core.pool import process_pool, submit
    from hpatk.core.registry import plugin_dirs

    # a bounded window of tasks in flight keeps memory flat however slow the writer is;
    # Ctrl-C or an error (also GeneratorExit: the writer stopped) terminates the workers
    window = 4 * workers
    folders = [str(f) for f in plugin_dirs()]  # a --plugins-dir enhancer loads there too
    with process_pool(workers, init_worker,
                      (enhance, params, stains, size, os.getpid(), folders)) as pool:
        pending: list[Any] = []
        try:
            for task in tasks:
                pending.append(submit(pool, preprocess_refs, task))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        except BrokenProcessPool as exc:
            raise HpatkError(f"a cache worker process died ({exc}); rerun with --workers 1 "
                             f"to see the failing image") from None


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_cache(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                enhance: str = DEFAULT_ENHANCE, enhance_params: Mapping[str, Any] | None = None,
                size: int = DEFAULT_SIZE, stains: Sequence[str] = STAINS,
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

    with writer_lock(out, quiet=quiet):  # DDP ranks calling ensure_cache build once
        remove_stale_temps(stale_temps(out), quiet=quiet)  # no live builder owns them
        reason = "--force" if force else _stale_reason(out, digest, config, listing,
                                                       compression)
        if reason is None:
            say(f"cache up to date: {out} ({len(refs)} images, {enhance_cfg['name']}, "
                 f"{size} px)", quiet)
            return out
        say(f"building {out}: {reason}", quiet)
        _warn_dropped_synthetic(out, quiet)
        comp = compression or _existing_compression(out) or "none"
        comp_kw = compression_kwargs(comp)
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
                f.create_group(SYN)
                images = f.create_dataset("images", (n, c, size, size), np.uint8,
                                          chunks=(1, c, size, size), **comp_kw)
                steps = contextlib.closing(_preprocessed(refs, enhance, params, stains, size,
                                                         workers))
                with steps as blocks:  # closed here, not at exit: its workers end now
                    _write_images(images, blocks, n, c * size * size, comp, tmp, out)
                f.attrs.update({
                    "format": FORMAT, "format_version": FORMAT_VERSION,
                    "preprocess_version": PREPROCESS_VERSION, "fingerprint": digest,
                    "config": json_text(config),
                    "inputs": json_text([{"root": str(r), "source": s, "images": k}
                                     for r, s, k in roots]),
                    "enhance": json_text(enhance_cfg), "size": size, "stains": json_text(stains),
                    "compression": comp, "hpatk_version": __version__,
                    "opencv_version": cv2.__version__, "h5py_version": h5py.__version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "build_seconds": round(time.monotonic() - start, 1),
                })
            with open(tmp, "rb") as fh:  # durable before it becomes visible
                os.fsync(fh.fileno())
        say(f"wrote {out}: {n} images {c}x{size}x{size} in {time.monotonic() - start:.1f}s",
             quiet)
    return out


def _write_images(images: Any, blocks: Iterable[np.ndarray], n: int, image_bytes: int,
                  comp: str, tmp: Path, out: Path) -> None:
    """Store the preprocessed images row by row, checking the free space as it goes
    (HDF5 crashes when it cannot close a file on a full disk: stop before that)."""
    from hpatk.core.io import check_free_space
    from hpatk.core.progress import progress

    row = 0
    for block in progress(_images_of(blocks), desc=f"cache {out.name}", total=n, unit="img"):
        if row % 64 == 0:
            check_free_space(tmp, (n - row if comp == "none" else 64) * image_bytes, out)
        images[row] = block
        row += 1


def _warn_dropped_synthetic(out: Path, quiet: bool) -> None:
    """Say how many synthetic images a rebuild of ``out`` drops (they were sampled for
    the old images: they must be sampled again)."""
    batches: list[dict[str, Any]] = []
    with contextlib.suppress(HpatkError, OSError, KeyError, ValueError):
        if out.is_file():
            with open_h5(out) as f:
                batches = synthetic_batches(f)
    n = sum(b["n"] for b in batches)
    if n:
        say(f"warning: rebuilding {out} drops its {n} synthetic images ({len(batches)} "
            f"batches, e.g. from {batches[0]['generator']}); add them again after the "
            f"build", quiet)


def _existing_compression(out: Path) -> str | None:
    with contextlib.suppress(HpatkError, OSError), open_h5(out) as f:
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


def default_cache_path(data_dir: str | os.PathLike[str], *, enhance: str = DEFAULT_ENHANCE,
                       enhance_params: Mapping[str, Any] | None = None, size: int = DEFAULT_SIZE,
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
    tag = hashlib.sha256(json_text(key).encode()).hexdigest()[:8]
    data_dir = Path(data_dir).resolve()
    folder = Path(cache_dir) if cache_dir is not None else data_dir.parent
    return folder / f"{data_dir.name}.{cfg['name']}-{int(size)}px-{tag}.h5"


def ensure_cache(data: str | os.PathLike[str], *, enhance: str = DEFAULT_ENHANCE,
                 enhance_params: Mapping[str, Any] | None = None, size: int = DEFAULT_SIZE,
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
    with open_h5(p):
        pass
    return p
