"""The documentation site's sources (docs/): every API reference names something that
exists, and the tree the API pages read is the one setup.py maps. CI builds the site
itself with ``mkdocs build --strict`` (make docs)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "pages").glob("*.md"))
DIRECTIVE = re.compile(r"^::: (hpatk\.[\w.]+)\n((?:    .*\n)*)", re.M)


def _directives() -> list[tuple[str, str, str]]:
    return [(page.name, m.group(1), m.group(2)) for page in PAGES
            for m in DIRECTIVE.finditer(page.read_text(encoding="utf-8"))]


def test_pages_exist_and_are_in_the_nav():
    config = (ROOT / "docs" / "mkdocs.yml").read_text(encoding="utf-8")
    assert PAGES
    for page in PAGES:
        assert f": {page.name}" in config, f"{page.name} is not in docs/mkdocs.yml's nav"


@pytest.mark.parametrize("page, target, options", _directives(),
                         ids=[f"{p}:{t}" for p, t, _ in _directives()])
def test_api_references_exist(page, target, options):
    module = importlib.import_module(target)
    members = re.search(r"members: \[([^\]]*)\]", options)
    for name in (members.group(1).split(",") if members else []):
        assert hasattr(module, name.strip()), f"{page}: {target}.{name.strip()} does not exist"


def test_source_links_match_setup_py():
    """docs/src/hpatk/* (what mkdocstrings reads) are links to the folders setup.py maps."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    packages = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", "") == "PACKAGES" for t in node.targets))
    src = ROOT / "docs" / "src" / "hpatk"
    assert sorted(p.name for p in src.iterdir()) == sorted(k.split(".")[1] for k in packages)
    for package, folder in packages.items():
        link = src / package.split(".")[1]
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()
