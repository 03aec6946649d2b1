"""Plain helpers the test modules share (``from helpers import invoke``; pytest puts tests/
on the path). Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from click.testing import CliRunner, Result
from hpatk.cli.main import cli


def invoke(*args: object, ok: bool = True, catch_exceptions: bool = True) -> Result:
    """Run ``hpatk ARGS`` in-process, each argument ``str()``-ed.

    Args:
        ok: assert exit status 0, showing the output and the exception when not.
        catch_exceptions: False lets an exception out of the command (click's option).
    """
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)
    if ok:
        assert r.exit_code == 0, r.output + (f"\n{r.exception!r}" if r.exception else "")
    return r


def one_line_error(r: Result, *fragments: str) -> str:
    """Assert exit 1, exactly one ``Error`` line containing every fragment, no traceback;
    return that line."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.output
    for fragment in fragments:
        assert fragment in errors[0], r.output
    return errors[0]


@contextlib.contextmanager
def serving(model: str | os.PathLike[str], log: Path, deadline_s: float = 90) -> Iterator[str]:
    """``hpatk serve MODEL --port 0`` on 127.0.0.1 in a subprocess, its output in ``log``;
    yields the base URL it says it listens on (the port the server bound itself: no
    free-port guess another process could take first) once /readyz answers 200, and stops
    it on exit. ``deadline_s`` is a hang guard only."""
    import re
    import subprocess
    import sys
    import time

    import httpx
    import pytest

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpatk.cli.main", "serve", str(model), "--host",
             "127.0.0.1", "--port", "0", "--provider", "cpu", "--threads", "1",
             "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + deadline_s
        url = None
        while True:
            if proc.poll() is not None:
                pytest.fail(f"hpatk serve exited ({proc.returncode}): {log.read_text()}")
            if url is None:
                found = re.search(r"serving \S+ on (http://127\.0\.0\.1:[1-9][0-9]*)/",
                                  log.read_text())
                url = found and found.group(1)
            if url is not None:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"hpatk serve not ready after {deadline_s} s: {log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
