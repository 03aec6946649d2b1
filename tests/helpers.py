"""Plain helpers the test modules share (``from helpers import invoke``; pytest puts tests/
on the path). Fixtures live in conftest.py."""

from __future__ import annotations

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
