"""Atomic file writes (a temporary file in the same folder, renamed when complete) and
small file helpers.

Every write of hpatk goes through :func:`atomic_path` / :func:`atomic_open` (files) or
:func:`make_dirs` (output folders): an output that cannot be written (a folder under a
regular file, ``/proc``, read-only, full disk) is one :class:`HpatkError` line naming it,
the temporary file is removed, and what was there before is left intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hpatk.core.errors import HpatkError

# errno values meaning "this place cannot be written", not "this input is bad"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EEXIST, errno.ENOTDIR, errno.ENOENT, errno.EACCES, errno.EPERM,
               errno.EROFS, errno.EISDIR, *_NO_SPACE)


def write_error(exc: OSError, path: str | os.PathLike[str]) -> HpatkError:
    """The one-line error for an ``OSError`` met while writing ``path``."""
    path = os.fspath(path)
    if exc.errno in _NO_SPACE:
        return HpatkError(f"no space left on device writing {path}")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        here = Path(path).absolute()
        blocker = next((p for p in (here, *here.parents) if p.is_file()), None)
        if blocker is not None:
            return HpatkError(f"cannot write '{path}': '{blocker}' is a file, not a folder")
    return HpatkError(f"cannot write '{path}': {exc.strerror or exc}")


def is_write_error(exc: BaseException) -> bool:
    """True for an ``OSError`` saying a place cannot be written (full, read-only, ...)."""
    return isinstance(exc, OSError) and exc.errno in _UNWRITABLE


# the errors only writing meets (a read fails with ENOENT/EACCES/EISDIR too)
_WRITING_ONLY = (errno.EEXIST, errno.ENOTDIR, errno.EROFS, *_NO_SPACE)


def is_writing_only_error(exc: BaseException) -> bool:
    """True for an ``OSError`` only a write can raise (a full disk, a read-only file
    system, a file where a folder should be): one :func:`write_error` can describe
    whatever raised it."""
    return isinstance(exc, OSError) and exc.errno in _WRITING_ONLY


# room kept free for what a writer has buffered and its closing metadata
FREE_SPACE_MARGIN = 1 << 20


def check_free_space(where: str | os.PathLike[str], need: int,
                     target: str | os.PathLike[str]) -> None:
    """Raise "no space left on device writing TARGET" when the file system holding
    ``where`` has less than ``need`` bytes (plus :data:`FREE_SPACE_MARGIN`) free.

    For writers that cannot fail cleanly on a full disk (HDF5 crashes when a file
    cannot be closed): they check before writing, so the disk never fills under them.
    """
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return  # unknown: let the write itself fail
    free = st.f_bavail * st.f_frsize
    if free < need + FREE_SPACE_MARGIN:
        raise HpatkError(f"no space left on device writing {os.fspath(target)} (needs about "
                         f"{(need + FREE_SPACE_MARGIN) / 1e6:.1f} MB, {free / 1e6:.1f} MB free)")


def disk_is_full(where: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``where`` has less than
    :data:`FREE_SPACE_MARGIN` bytes free (for writers whose errors lose the errno)."""
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < FREE_SPACE_MARGIN


def make_dirs(path: str | os.PathLike[str], target: str | os.PathLike[str] | None = None
              ) -> Path:
    """``mkdir -p path``; a place that cannot hold a folder is one clear line naming
    ``target`` (what is being written there; ``path`` itself by default)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, target if target is not None else path) from None
    return path


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike[str], *, wait: bool = True, what: str = "",
                quiet: bool = False, remove: bool = False) -> Iterator[None]:
    """Exclusive ``flock`` on ``.NAME.lock`` beside ``path``: one writer of ``path`` at a
    time, so that the holder may remove ``path``'s stale temporaries (:func:`stale_temps`).

    Args:
        wait: wait for the other writer (saying so on stderr), else refuse with one line.
        what: how the message names the writer ("hpatk train"); may be empty.
        quiet: do not say that it waits.
        remove: delete the lock file when done (only with ``wait=False``: a waiter would
            hold a lock on a deleted file).
    """
    import fcntl
    import sys

    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    make_dirs(path.parent, target=path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise HpatkError(f"{path} is being written by another process"
                                 f"{f' ({what})' if what else ''}; wait for it or choose "
                                 f"another place") from None
            if not quiet:
                print(f"waiting for another process writing {path} ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no lock support on this file system: go on unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        if remove and not wait:
            with contextlib.suppress(OSError):
                lock_path.unlink()
        os.close(fd)


def remove_stale_temps(temps: list[Path], *, quiet: bool = False) -> list[Path]:
    """Remove temporaries (files or folders) a killed writer left, e.g.
    :func:`stale_temps` of a path; call it holding that path's :func:`writer_lock`.
    Returns what was removed."""
    import shutil
    import sys

    removed = []
    for tmp in temps:
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
        if not quiet:
            print(f"removed a partial build left by a killed process: {tmp}", file=sys.stderr)
    return removed


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where Linux has it (a read, safe with
    threads), else by setting it and putting it back."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of ``path`` beside it: ``.NAME.XXXXXXXX[suffix].tmp`` as
    :func:`atomic_path` (or ``tempfile.mkdtemp`` with the same prefix) names them; the
    8-character random part keeps ``.NAME.csv.XXXXXXXX.tmp`` (another file's) out."""
    import glob

    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.{'[a-z0-9_]' * 8}*.tmp"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched; a full disk
    or an unwritable place becomes one :class:`HpatkError` line naming ``path``.
    """
    path = Path(path)
    make_dirs(path.parent, target=path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; open() would not
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise write_error(exc, path) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kw: Any) -> Iterator[IO[Any]]:
    """``open`` that writes to a temporary file and renames it when the block ends."""
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        yield f
