"""The registry: one catalogue per plugin kind, built from a pluggy plugin manager.

Built-ins are entry points of the ``hpatk`` group in hpatk's own setup.py and load
exactly as a third-party plugin does (:mod:`hpatk.core.plugin_loader` finds and imports
them; :mod:`hpatk.core.catalog` holds the names). The plugin manager is the source of
truth: the catalogues are rebuilt whenever its set of plugins changes, so tests can
``pm.register(...)`` a throw-away plugin and ``pm.unregister(...)`` it in ``finally``.

Each plugin's hook is called on its own (a pluggy subset hook caller), so one that
raises is marked broken and the others still load. ``HPATK_TRACE_PLUGINS=1`` prints
every hook call (pluggy's hook-call monitoring) on stderr.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pluggy
from hpatk.core.catalog import KINDS, Catalog, Entry, Registration
from hpatk.core.errors import RegistryError
from hpatk.core.plugin_loader import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    make_plugin_manager,
    plugin_dirs,
    use_plugin_dirs,
)

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "Catalog", "Entry", "PluginInfo", "Registry",
           "get_registry", "make_plugin_manager", "plugin_dirs", "reset_registry",
           "set_plugin_dirs"]

BUILTIN = "hpatk (built-in)"


def _trace(hook_name: str, hook_impls: Sequence[Any], kwargs: Any) -> None:
    for impl in hook_impls:
        print(f"hpatk: calling {hook_name} of plugin '{impl.plugin_name}'", file=sys.stderr)


class Registry:
    """Plugin manager plus one catalogue per kind; get one with :func:`get_registry`."""

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self._infos = infos
        self._key: tuple[str, ...] | None = None
        self._catalogs: dict[str, Catalog] = {}
        self._lock = threading.RLock()
        if os.environ.get("HPATK_TRACE_PLUGINS", "") not in ("", "0"):
            pm.add_hookcall_monitoring(_trace, lambda *args: None)

    # -- catalogues -------------------------------------------------------------------
    @property
    def enhancers(self) -> Catalog:
        return self.catalog("enhancers")

    @property
    def augmentations(self) -> Catalog:
        return self.catalog("augmentations")

    @property
    def backbones(self) -> Catalog:
        return self.catalog("backbones")

    @property
    def losses(self) -> Catalog:
        return self.catalog("losses")

    @property
    def synthesizers(self) -> Catalog:
        return self.catalog("synthesizers")

    def catalog(self, kind: str) -> Catalog:
        """The catalogue of ``kind`` (one of :data:`KINDS`)."""
        if kind not in KINDS:
            raise RegistryError(f"unknown kind '{kind}' (kinds: {', '.join(KINDS)})")
        with self._lock:
            key = tuple(sorted(name for name, _ in self.pm.list_name_plugin()))
            if key != self._key:
                self._catalogs = self._collect()
                self._key = key
            return self._catalogs[kind]

    def _each_plugin(self, hook: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """(plugin name, a caller of that plugin's ``hook`` alone) in load order (entry
        points by name, then plugins-dir files, then runtime registrations; pluggy
        itself calls the last registered first)."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()  # registration order
        for impl in impls:
            others = [i.plugin for i in impls if i is not impl]
            yield impl.plugin_name, self.pm.subset_hook_caller(hook, others)

    def _call(self, plugin: str, caller: Callable[..., Any], **kwargs: Any) -> bool:
        """``caller(**kwargs)``; False, with the plugin marked broken, if it raised."""
        try:
            caller(**kwargs)
        except RegistryError:
            raise
        except Exception as exc:  # a broken plugin must not stop the others
            info = self._infos.setdefault(plugin, PluginInfo(plugin, source="runtime"))
            info.status, info.error = "broken", f"{type(exc).__name__}: {exc}"
            return False
        return True

    def _collect(self) -> dict[str, Catalog]:
        catalogs = {kind: Catalog(kind) for kind in KINDS}
        not_loaded = {n: i.error or "" for n, i in self._infos.items()
                      if i.status == "broken" and i.source != "runtime"}  # failed at import
        for kind in KINDS:
            catalogs[kind].broken.update(not_loaded)  # any of them may have provided a name
            for plugin, call in self._each_plugin(f"hpatk_register_{kind}"):
                reg = Registration(kind, plugin)  # committed only if the whole call succeeds
                if self._call(plugin, call, register=reg.register):
                    for entry in reg.entries:
                        catalogs[kind].add(entry)
                else:
                    catalogs[kind].broken[plugin] = self._infos[plugin].error or ""
        # `--aug NAME` looks in both: a name must say which kind it is
        aug, syn = catalogs["augmentations"], catalogs["synthesizers"]
        for key in sorted(aug.keys() & syn.keys()):
            a, b = aug.owner(key), syn.owner(key)
            raise RegistryError(f"'{key}' is registered as an augmentation (plugin "
                                f"'{a.plugin if a else '?'}') and as a synthesizer (plugin "
                                f"'{b.plugin if b else '?'}'); --aug needs one meaning")
        return catalogs

    # -- plugins ----------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        """Every plugin, loaded or broken, with its hooks."""
        for kind in KINDS:  # collecting may mark plugins broken
            self.catalog(kind)
        registered = {name for name, _ in self.pm.list_name_plugin()}
        infos = {n: i for n, i in self._infos.items()
                 if i.source != "runtime" or n in registered}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            info = infos.get(name) or PluginInfo(name=name, source="runtime")
            info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            infos[name] = info
        return sorted(infos.values(), key=lambda i: i.name)

    def add_commands(self, cli: Any, builtin: Iterable[str] = ()) -> None:
        """Let every plugin add its click commands to the group ``cli``.

        A command whose name is taken (one of ``builtin``, a command ``cli`` already
        has, or one an earlier plugin added) is refused: ``cli`` keeps the first, and
        the plugin's :class:`PluginInfo` says which command was refused and whose name
        it is (``hpatk plugins`` lists it).
        """
        owner = {name: BUILTIN for name in [*builtin, *cli.commands]}
        for info in self._infos.values():
            info.refused.clear()  # what this call refuses
        for plugin, call in self._each_plugin("hpatk_register_commands"):
            before = dict(cli.commands)
            if not self._call(plugin, call, cli=cli):
                continue
            for name, cmd in list(cli.commands.items()):
                if before.get(name) is cmd:
                    continue
                if name not in owner:
                    owner[name] = f"plugin '{plugin}'"
                    continue
                if name in before:  # the first one stays
                    cli.commands[name] = before[name]
                else:  # a built-in's name: it would never be reachable
                    del cli.commands[name]
                by = ("hpatk's built-in command" if owner[name] == BUILTIN
                      else f"the command of {owner[name]}")
                info = self._infos.setdefault(plugin, PluginInfo(plugin, source="runtime"))
                info.refused.append(f"command '{name}' of plugin '{plugin}' refused: "
                                    f"'{name}' is already {by}")


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry; plugins are loaded on the first call."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry(*make_plugin_manager())
        return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (the next :func:`get_registry` loads them again)."""
    global _registry
    with _registry_lock:
        _registry = None


def set_plugin_dirs(folders: Sequence[str | os.PathLike[str]] | None) -> None:
    """Load plugins from ``folders`` instead of ``$HPATK_PLUGINS_DIR`` (None: from the
    variable again); the registry reloads on its next use. The environment is left as
    it is: processes hpatk starts get the folders as an argument."""
    with _registry_lock:
        use_plugin_dirs(folders)
    reset_registry()
