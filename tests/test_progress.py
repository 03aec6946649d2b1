"""Progress output (core/progress.py) and shell completion: a bar on a terminal, a few
lines in a log."""

from __future__ import annotations

import io
import sys

import pytest
from click.testing import CliRunner
from hpatk.core import progress as progress_mod
from hpatk.core.progress import progress


class FakeClock:
    """time.monotonic advancing ``dt`` seconds per call."""

    def __init__(self, dt: float) -> None:
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_log_gets_a_line_per_tenth_not_per_update(capsys, monkeypatch):
    # a clock that ticks 1 ms per read: no 30 s gap, however long a loaded machine stalls
    monkeypatch.setattr(progress_mod.time, "monotonic", FakeClock(0.001))
    items = list(progress(range(1000), desc="cache", unit="img"))
    assert items == list(range(1000))  # everything passes through, in order
    lines = _lines(capsys)
    assert len(lines) == 10  # 10%, 20%, ..., 90% and the final "done" line
    assert lines[0].startswith("cache:  10% 100/1000 img")
    assert lines[-2].startswith("cache:  90% 900/1000 img")
    assert lines[-1].startswith("cache: 1000 img done in")


def test_log_gets_a_line_every_30_s_without_a_total(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod.time, "monotonic", FakeClock(5.0))
    list(progress(iter(range(20)), desc="gan", unit="step"))  # no len(): no percentages
    lines = _lines(capsys)
    # 5 s per item: a line at the 6th item (30 s), the 12th, the 18th, then "done"
    assert [line.split()[1] for line in lines[:-1]] == ["6", "12", "18"]
    assert lines[-1].startswith("gan: 20 step done in")


def test_slow_work_prints_by_time_between_tenths(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod.time, "monotonic", FakeClock(31.0))
    list(progress(range(20), desc="train"))
    assert len(_lines(capsys)) == 20  # every item took > 30 s: 19 lines + "done"


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress(range(50), desc="bar", unit="img")) == list(range(50))
    text = err.getvalue()
    assert "\r" in text and "50/50" in text and "%|" in text  # tqdm's bar


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F"), ("zsh", "compdef"),
    ("fish", "complete --no-files --command hpatk")])
def test_completion_scripts(shell, marker):
    from hpatk.cli.main import cli

    res = CliRunner().invoke(cli, [], prog_name="hpatk",
                             env={"_HPATK_COMPLETE": f"{shell}_source"})
    assert res.exit_code == 0 and marker in res.output


def test_completion_finds_lazy_and_plugin_commands_and_options():
    from hpatk.cli.main import cli

    def complete(words: str, cword: int) -> list[str]:
        res = CliRunner().invoke(cli, [], prog_name="hpatk", env={
            "_HPATK_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
        assert res.exit_code == 0
        return [line.split(",", 1)[1] for line in res.output.splitlines()]

    assert {"train", "gan", "predict"} <= set(complete("hpatk ", 1))
    assert complete("hpatk train --thr", 2) == ["--threads"]
