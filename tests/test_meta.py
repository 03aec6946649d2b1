"""Meta-tests keep the extension surface honest (as datasette does): every hook is
documented (the reference, docs/pages/plugins.md) under its exact signature and has a
``test_hook_<name>``; every CLI command is documented (README.md or docs/pages); the
README's plugin tutorial is the installed example plugin; the README stays a guide."""

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
def test_hook_documented_under_exact_signature(hook, documentation):
    assert f"#### `{_signature(hook)}`" in documentation


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


def test_every_command_is_documented(documentation):
    for name, _ in _all_commands():
        assert f"hpatk {name}" in documentation, \
            f"'hpatk {name}' is documented neither in README.md nor in docs/pages"


def test_readme_is_a_guide():
    """README.md stays a guide (issue 17: about 300 lines) whose table of contents reaches
    every page of the reference site."""
    assert len(README.splitlines()) <= 300, "README.md is over 300 lines: move reference " \
        "material to docs/pages"
    for page in sorted((ROOT / "docs" / "pages").glob("*.md")):
        if page.name != "index.md":
            assert f"](docs/pages/{page.name})" in README, f"README.md does not link {page.name}"


def _private_uses(source: str, where: str) -> list[str]:
    """``from hpatk.x import _name`` and ``module._name`` (module an hpatk module or
    name) in one file's ``source``: private names used outside the module defining them."""
    import ast

    tree = ast.parse(source, where)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpatk"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{where}:{node.lineno}: from {node.module} "
                                 f"import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names
                        if a.name.startswith("hpatk")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    """A name starting with ``_`` is used only in its own module: what others need gets a
    public name (tests and benchmarks included)."""
    found = []
    for folder in ("core", "plugins", "cli", "export", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += _private_uses(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_check_can_fail():
    source = ("from hpatk.core.cache_file import _validate, open_h5\n"
              "from hpatk.core import io\nimport hpatk.core.engine as eng\n"
              "io._hidden\neng._train_fold\nio.__doc__\nother._fine\n")
    assert _private_uses(source, "x.py") == [
        "x.py:1: from hpatk.core.cache_file import _validate", "x.py:4: io._hidden",
        "x.py:5: eng._train_fold"]


def test_every_plugin_kind_has_a_live_registry_smoke_test():
    """A kind added to the registry gets a smoke test over everything registered for it
    (tests/test_registry_smoke.py, parametrized over ``REG.<kind>.names()``)."""
    from hpatk.core.registry import KINDS

    source = (ROOT / "tests" / "test_registry_smoke.py").read_text()
    for kind in KINDS:
        assert re.search(rf'@pytest\.mark\.parametrize\("name", [^\n]*REG\.{kind}\.names\(\)',
                         source), f"no smoke test parametrized over REG.{kind}.names()"


def test_architecture_section_matches_the_code():
    """Every file and every ``pkg.module.name()`` the architecture page's walk
    (docs/pages/architecture.md) names exists, and every module of core/ is in the diagram."""
    import importlib

    section = (ROOT / "docs" / "pages" / "architecture.md").read_text(encoding="utf-8")
    for path in re.findall(r"\b(?:core|cli|export)/\w+\.py\b", section):
        assert (ROOT / path).is_file(), f"architecture.md: {path} does not exist"
    for dotted in re.findall(r"`((?:core|cli|export)(?:\.\w+)+)\(\)`", section):
        module, name = dotted.rsplit(".", 1)
        assert hasattr(importlib.import_module(f"hpatk.{module}"), name), dotted
    named = set(re.findall(r"\b(\w+)\.py\b", section))
    skip = {"__init__", "version", "errors", "classes"}
    missing = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem not in named | skip)
    assert not missing, f"core modules missing from architecture.md's diagram: {missing}"
