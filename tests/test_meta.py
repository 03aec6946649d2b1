"""Meta-tests keep the extension surface honest (as datasette does): every hook is
documented in README.md under its exact signature and has a ``test_hook_<name>``;
every CLI command is documented; the README tutorial is the installed example plugin."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from hpatk.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("hpatk_")]


def _signature(name: str) -> str:
    params = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def test_six_hooks():
    assert sorted(HOOKS) == sorted([
        "hpatk_register_enhancers", "hpatk_register_augmentations",
        "hpatk_register_backbones", "hpatk_register_losses", "hpatk_register_synthesizers",
        "hpatk_register_commands"])


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_documented_under_exact_signature(hook):
    assert f"#### `{_signature(hook)}`" in README


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names |= set(re.findall(r"def (test_hook_\w+)\(", path.read_text()))
    assert f"test_hook_{hook}" in names


def _code_block_after(marker: str) -> str:
    start = README.index(marker)
    block = re.search(r"```(?:python|toml)\n(.*?)```", README[start:], re.S)
    assert block
    return block.group(1)


def test_readme_tutorial_is_the_installed_example():
    example = (ROOT / "tests/plugin_pkg/hpatk_gamma.py").read_text()
    assert _code_block_after("`hpatk_gamma.py`:") == example
    toml = _code_block_after("`pyproject.toml`:")
    for line in ("[project.entry-points.hpatk]", 'gamma = "hpatk_gamma"'):
        assert line in toml


def _all_commands():
    import click
    from hpatk.cli.main import cli

    ctx = click.Context(cli)
    out = []

    def walk(group, prefix):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            out.append((f"{prefix} {name}".strip(), cmd))
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix} {name}")

    walk(cli, "")
    return out


def test_every_command_has_help_with_an_example():
    for name, cmd in _all_commands():
        if name == "gamma-table":  # the example plugin's, documented in the tutorial
            continue
        assert cmd.help and "Example:" in cmd.help, f"hpatk {name} has no example in --help"


def test_every_command_is_in_the_readme():
    for name, _ in _all_commands():
        assert f"hpatk {name}" in README, f"'hpatk {name}' is not documented in README.md"
