"""Progress bars on a terminal, plain lines elsewhere (logs, CI)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             unit: str = "it", every_s: float = 10.0) -> Iterator[T]:
    """Wrap ``iterable`` with a tqdm bar on a terminal; elsewhere print a line at most
    every ``every_s`` seconds and one at the end."""
    if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: rank 0 reports for all
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    n = 0
    for n, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {n}{of} {unit} ({n / (now - start):.1f} {unit}/s)", file=sys.stderr,
                  flush=True)
    if n:
        elapsed = max(time.monotonic() - start, 1e-9)
        print(f"{desc}: {n} {unit} done in {elapsed:.1f}s", file=sys.stderr, flush=True)
