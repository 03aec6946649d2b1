"""Progress bars on a terminal, a few plain lines elsewhere (logs, CI).

On a terminal (stderr is a TTY) long work shows a tqdm bar. Anywhere else a bar's
carriage returns would fill a log with one line per update, so :func:`progress` prints a
line each time another ~10% is done (when the total is known) or 30 s have passed since
the last line, whichever comes first, and one line at the end.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

EVERY_S = 30.0  # at least one line per half minute without a bar
EVERY_FRACTION = 0.1  # and one per tenth of the work


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             unit: str = "it", every_s: float = EVERY_S,
             every_fraction: float = EVERY_FRACTION) -> Iterator[T]:
    """Yield from ``iterable``, showing progress on stderr.

    Args:
        iterable: the work; its ``len`` is the total unless ``total`` is given.
        desc: what is being done, the start of each line.
        total: number of items, if ``iterable`` has no length.
        unit: what an item is ("img", "batch", ...).
        every_s: without a terminal, the longest gap between two lines (seconds).
        every_fraction: without a terminal, a line each time this fraction of ``total``
            more is done.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: rank 0 reports for all
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True)
        return
    step = max(1, math.ceil(total * every_fraction)) if total else None
    start = last = time.monotonic()
    next_mark = step
    n = 0
    for n, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        at_mark = next_mark is not None and n >= next_mark
        if (at_mark or now - last >= every_s) and n != total:
            last = now
            if step is not None:
                next_mark = (n // step + 1) * step
            print(_line(desc, n, total, unit, now - start), file=sys.stderr, flush=True)
    if n:
        elapsed = max(time.monotonic() - start, 1e-9)
        print(f"{desc}: {n} {unit} done in {elapsed:.1f}s ({n / elapsed:.1f} {unit}/s)",
              file=sys.stderr, flush=True)


def _line(desc: str, n: int, total: int | None, unit: str, elapsed: float) -> str:
    rate = n / max(elapsed, 1e-9)
    if not total:
        return f"{desc}: {n} {unit} ({rate:.1f} {unit}/s)"
    left = (total - n) / rate if rate > 0 else math.inf
    return (f"{desc}: {100 * n / total:3.0f}% {n}/{total} {unit} ({rate:.1f} {unit}/s, "
            f"~{left:.0f}s left)")
