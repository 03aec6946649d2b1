"""Finding and importing plugins: the ``hpatk`` entry points and the ``.py`` files of
the plugin folders, into a pluggy plugin manager, with what ``hpatk plugins`` reports
about each (internal to :mod:`hpatk.core.registry`, which re-exports the public names)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from hpatk.core import hookspecs
from hpatk.core.errors import RegistryError

ENTRY_POINT_GROUP = "hpatk"
OWN_DIST = "hpatk"  # the distribution whose entry points are the built-in plugins


@dataclass
class PluginInfo:
    """What ``hpatk plugins`` shows for one plugin."""

    name: str
    dist: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok" or "broken"
    error: str | None = None
    source: str = "entry-point"  # "entry-point", "plugins-dir" or "runtime"
    refused: list[str] = field(default_factory=list)  # commands not added, and why

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dist": self.dist, "version": self.version,
             "hooks": self.hooks, "status": self.status, "source": self.source}
        if self.error:
            d["error"] = self.error
        if self.refused:
            d["refused"] = list(self.refused)
        return d


# -- loading --------------------------------------------------------------------------
_dirs: list[Path] | None = None  # use_plugin_dirs' folders; None: $HPATK_PLUGINS_DIR


def use_plugin_dirs(folders: Sequence[str | os.PathLike[str]] | None) -> None:
    """What :func:`plugin_dirs` returns from now on (None: ``$HPATK_PLUGINS_DIR``)."""
    global _dirs
    _dirs = None if folders is None else [Path(f) for f in folders]


def plugin_dirs() -> list[Path]:
    """The folders whose ``.py`` files load as plugins: those of :func:`use_plugin_dirs`
    (``hpatk --plugins-dir``), else ``$HPATK_PLUGINS_DIR`` (``os.pathsep``-separated)."""
    if _dirs is not None:
        return list(_dirs)
    raw = os.environ.get("HPATK_PLUGINS_DIR", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    builtins_only = os.environ.get("HPATK_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if builtins_only and dist != OWN_DIST:
            continue
        name = ep.name if dist == OWN_DIST else f"{dist}.{ep.name}" if dist else ep.name
        if name in infos or pm.has_plugin(name):
            continue
        info = infos[name] = PluginInfo(name=name, dist=dist, version=version)
        try:
            pm.register(ep.load(), name=name)
        except Exception as exc:  # a plugin that fails to import is reported, not fatal
            info.status, info.error = "broken", f"{type(exc).__name__}: {exc}"


def _load_plugin_dirs(pm: pluggy.PluginManager, infos: dict[str, PluginInfo],
                      folders: Sequence[Path]) -> None:
    for folder in folders:
        if not folder.is_dir():
            raise RegistryError(f"plugins dir '{folder}' is not a folder")
        for path in sorted(folder.glob("*.py")):
            name = f"plugins-dir:{path.stem}"
            info = infos[name] = PluginInfo(name=name, source="plugins-dir")
            try:
                spec = importlib.util.spec_from_file_location(f"hpatk_plugins_dir.{path.stem}",
                                                              path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                pm.register(module, name=name)
            except Exception as exc:
                info.status, info.error = "broken", f"{type(exc).__name__}: {exc} ({path})"


def make_plugin_manager(folders: Sequence[str | os.PathLike[str]] | None = None
                        ) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A plugin manager with the hookspecs, every entry point and the ``.py`` files of
    ``folders`` (default: :func:`plugin_dirs`) loaded."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
    _load_plugin_dirs(pm, infos, plugin_dirs() if folders is None else
                      [Path(f) for f in folders])
    try:
        pm.check_pending()  # a misspelled hook name is an error, not a silent no-op
    except pluggy.PluginValidationError as exc:
        raise RegistryError(f"plugin hook error: {exc}") from exc
    return pm, infos
