"""hpatk's thread policy (core/threads.py) and the shared ``--threads`` option."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from hpatk.core import threads


@pytest.fixture
def clean_threads(monkeypatch):
    """Restore the environment, torch's thread count and the configured count."""
    import torch

    saved_env, saved_n = dict(os.environ), torch.get_num_threads()
    monkeypatch.setattr(threads, "_configured", None)  # nothing configured; put back after
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    torch.set_num_threads(saved_n)


def test_default_respects_omp_num_threads(clean_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert threads.default_threads() == threads.available_cpus()


def test_available_cpus_capped_by_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    assert threads.available_cpus() == 2  # a 1.5-CPU container on a 64-core host
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cpus() == 64


def test_configure_sets_torch_and_env(clean_threads, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.thread_count() == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # an explicit choice is kept
    threads.configure_threads(2)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least 1"):
        threads.configure_threads(0)


def test_policy_applies_before_torch_import():
    # A fresh process: the command line configures OpenMP before torch loads.
    code = ("import os, sys\n"
            "from hpatk.cli.main import cli\n"
            "cli.main(['registry', 'losses'], standalone_mode=False)\n"
            "import torch\n"
            "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-2:] == ["PASSIVE", "1"]


HEAVY = [("train",), ("evaluate",), ("experiment", "backbones"),
         ("experiment", "gan-vs-classic"), ("cache", "build"), ("predict",), ("demo",),
         ("gan", "train"), ("serve",)]


@pytest.mark.parametrize("path", HEAVY, ids=" ".join)
def test_heavy_commands_share_the_threads_option(path):
    from hpatk.cli.main import cli

    cmd: click.Command = cli
    ctx = click.Context(cli)
    for name in path:
        cmd = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
        assert cmd is not None, name
    opts = [p for p in cmd.params if "--threads" in getattr(p, "opts", ())]
    assert len(opts) == 1
    # the one implementation: threads_option's callback
    assert opts[0].callback.__qualname__.startswith("threads_option")


def test_threads_option_applies_and_validates(clean_threads, tmp_path):
    import torch
    from hpatk.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["predict", str(tmp_path / "missing.onnx"), str(tmp_path),
                              "--out", str(tmp_path / "s.csv"), "--threads", "1"])
    assert res.exit_code == 1  # the model is missing, but the threads were set first
    assert torch.get_num_threads() == 1 and threads.thread_count() == 1
    res = runner.invoke(cli, ["predict", "m.onnx", ".", "--out", "s.csv", "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output


def test_onnx_session_uses_the_thread_count(clean_threads):
    from hpatk.export.runtime import session_options

    threads.configure_threads(1)
    assert session_options().intra_op_num_threads == 1
    assert session_options(threads=3).intra_op_num_threads == 3
