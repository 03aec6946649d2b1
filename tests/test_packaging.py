"""Packaging: the hpatk namespace, no top-level `core`, py.typed, cheap imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_import_core_fails_in_installed_env(tmp_path):
    out = _py("import core", cwd=tmp_path)
    assert out.returncode != 0 and "No module named 'core'" in out.stderr
    assert _py("import hpatk.core, hpatk.plugins, hpatk.cli, hpatk.export", cwd=tmp_path
               ).returncode == 0


@pytest.mark.parametrize("pkg", ["core", "plugins", "cli", "export"])
def test_py_typed_shipped(pkg):
    import importlib

    mod = importlib.import_module(f"hpatk.{pkg}")
    assert (Path(mod.__file__).parent / "py.typed").is_file()


def test_no_relative_top_level_imports():
    """Code imports absolutely through hpatk.*, never `import core` / `from plugins`."""
    bad = []
    for folder in ("core", "plugins", "cli", "export", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                s = line.strip()
                if re.match(r"(import|from) (core|plugins|cli|export)(\.|\s|$)", s):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {s}")
    assert not bad, bad


def test_plugin_modules_and_cli_import_without_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from hpatk.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "from hpatk.core import get_registry\n"
        "reg = get_registry()\n"
        "kinds = ('enhancers', 'augmentations', 'backbones', 'losses', 'synthesizers')\n"
        "names = [reg.catalog(k).names() for k in kinds]\n"
        "heavy = ('torch', 'timm', 'kornia', 'cv2', 'onnx', 'onnxruntime', 'h5py')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = _py(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_core_never_imports_cli_or_export():
    bad = []
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text()
        for needle in ("hpatk.cli", "hpatk.export", "hpatk.plugins"):
            if needle in text:
                bad.append(f"{path.name}: {needle}")
    assert not bad, bad


def test_plugins_never_import_cli_or_each_other():
    bad = []
    plugin_dirs = ["enhance", "augment_classic", "augment_gan", "backbones", "losses"]
    for path in (ROOT / "plugins").rglob("*.py"):
        own = path.relative_to(ROOT / "plugins").parts[0].removesuffix(".py")
        text = path.read_text()
        if "hpatk.cli" in text or "hpatk.export" in text:
            bad.append(f"{path.name}: imports cli/export")
        for other in plugin_dirs:
            if other != own and f"hpatk.plugins.{other}" in text:
                bad.append(f"{path.name}: imports plugin {other}")
    assert not bad, bad


def test_version_matches_setup():
    from hpatk.core import __version__

    setup_py = (ROOT / "setup.py").read_text()
    assert f'VERSION = "{__version__}"' in setup_py
