"""The Makefile: `make demo` installs hpatk alone; the test-only example plugin is for
`make test` (and lint, bench) only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(target: str) -> str:
    # -B: as on a fresh clone (every prerequisite out of date); -n: print, run nothing
    return subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_demo_does_not_install_the_test_plugin():
    demo = _dry_run("demo")
    assert "pip install -c constraints.txt -e ." in demo and "hpatk demo" in demo
    assert "plugin_pkg" not in demo and "[test]" not in demo
    test = _dry_run("test")
    assert "tests/plugin_pkg" in test and "'.[test]'" in test
    assert "-m" not in test.split("pytest", 1)[1]  # make test runs every test, slow included


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_test_fast_skips_only_the_slow_tests():
    fast = _dry_run("test-fast")
    assert "tests/plugin_pkg" in fast and '-m "not slow"' in fast
