"""Plugin loading (pluggy) and the catalogues of what plugins register.

Built-ins are entry points of the ``hpatk`` group in hpatk's own setup.py and load
exactly as a third-party plugin does. The plugin manager is the source of truth: the
catalogues are rebuilt whenever its set of plugins changes, so tests can
``pm.register(...)`` a throw-away plugin and ``pm.unregister(...)`` it in ``finally``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from hpatk.core import hookspecs
from hpatk.core.errors import RegistryError

KINDS = ("enhancers", "augmentations", "backbones", "losses", "synthesizers")
ENTRY_POINT_GROUP = "hpatk"
_SINGULAR = {"enhancers": "enhancer", "augmentations": "augmentation",
             "backbones": "backbone", "losses": "loss", "synthesizers": "synthesizer"}


@dataclass(frozen=True)
class Entry:
    """One registered name: ``create`` calls ``factory(**params)``."""

    name: str
    factory: Callable[..., Any]
    kind: str
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def is_pattern(self) -> bool:
        """``prefix:*`` entries accept any ``prefix:variant`` name."""
        return self.name.endswith(":*")


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

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dist": self.dist, "version": self.version,
             "hooks": self.hooks, "status": self.status, "source": self.source}
        if self.error:
            d["error"] = self.error
        return d


class Catalog:
    """The names registered for one kind (enhancers, augmentations, backbones, losses)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def _add(self, entry: Entry) -> None:
        if entry.name in entry.aliases or len(set(entry.aliases)) != len(entry.aliases):
            raise RegistryError(f"plugin '{entry.plugin}' gives {_SINGULAR[self.kind]} "
                                f"'{entry.name}' a repeated alias")
        for key in (entry.name, *entry.aliases):
            owner = self._owner(key)
            if owner is not None:
                raise RegistryError(
                    f"{_SINGULAR[self.kind]} name '{key}' is registered twice: by plugin "
                    f"'{owner.plugin}' and by plugin '{entry.plugin}'"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def _owner(self, key: str) -> Entry | None:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def names(self) -> list[str]:
        """Registered names (not aliases), sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except RegistryError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry:
        """The entry for a name or alias; ``prefix:variant`` resolves to ``prefix:*``."""
        entry = self._owner(name)
        if entry is not None:
            return entry
        if ":" in name:
            pattern = self._owner(name.split(":", 1)[0] + ":*")
            if pattern is not None:
                return pattern
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(
            f"unknown {_SINGULAR[self.kind]} '{name}'{hint} (known: {', '.join(self.names())})"
        )

    def canonical(self, name: str) -> str:
        """The registered name behind an alias (``prefix:variant`` stays as given)."""
        entry = self.get(name)
        return name if entry.is_pattern else entry.name

    def create(self, name: str, **params: Any) -> Any:
        """Build the object registered as ``name`` (or an alias) with ``params``.

        A ``prefix:*`` entry gets the part after the colon as ``variant=``.
        """
        entry = self.get(name)
        if entry.is_pattern:
            variant = name.split(":", 1)[1]
            if not variant or variant == "*":
                raise RegistryError(f"{_SINGULAR[self.kind]} '{name}' needs a name after ':'")
            return entry.factory(variant=variant, **params)
        return entry.factory(**params)


class _Stage:
    """The ``register`` callback handed to one plugin's hook; entries are committed to
    the catalogue only if the whole hook call succeeds."""

    def __init__(self, kind: str, plugin: str) -> None:
        self.kind, self.plugin = kind, plugin
        self.entries: list[Entry] = []

    def register(self, name: str, factory: Callable[..., Any], *,
                 aliases: tuple[str, ...] | list[str] = (), description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"plugin '{self.plugin}' registered an empty name")
        if not callable(factory):
            raise RegistryError(
                f"plugin '{self.plugin}' registered '{name}' with a non-callable factory")
        self.entries.append(Entry(name, factory, self.kind, self.plugin, tuple(aliases),
                                  description))


class Registry:
    """Plugin manager plus the four catalogues; get one with :func:`get_registry`."""

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self._infos = infos
        self._key: tuple[str, ...] | None = None
        self._catalogs: dict[str, Catalog] = {}
        self._lock = threading.RLock()
        self.trace = os.environ.get("HPATK_TRACE_PLUGINS", "") not in ("", "0")

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

    def _collect(self) -> dict[str, Catalog]:
        catalogs = {kind: Catalog(kind) for kind in KINDS}
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"hpatk_register_{kind}")
            # pluggy calls the last registered first; register in load order instead.
            for impl in reversed(caller.get_hookimpls()):
                if self.trace:
                    print(f"hpatk: calling hpatk_register_{kind} of plugin "
                          f"'{impl.plugin_name}'", file=sys.stderr)
                stage = _Stage(kind, impl.plugin_name)
                try:
                    impl.function(register=stage.register)
                except RegistryError:
                    raise
                except Exception as exc:  # a broken plugin must not stop the others
                    self._mark_broken(impl.plugin_name, exc)
                    continue
                for entry in stage.entries:
                    catalogs[kind]._add(entry)
        # `--aug NAME` looks in both: a name must say which kind it is
        aug, syn = catalogs["augmentations"], catalogs["synthesizers"]
        for key in sorted({*aug._entries, *aug._aliases} & {*syn._entries, *syn._aliases}):
            a, b = aug._owner(key), syn._owner(key)
            raise RegistryError(f"'{key}' is registered as an augmentation (plugin "
                                f"'{a.plugin if a else '?'}') and as a synthesizer (plugin "
                                f"'{b.plugin if b else '?'}'); --aug needs one meaning")
        return catalogs

    def _mark_broken(self, name: str, exc: BaseException) -> None:
        info = self._infos.setdefault(name, PluginInfo(name=name, source="runtime"))
        info.status = "broken"
        info.error = f"{type(exc).__name__}: {exc}"

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

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its click commands to ``cli``."""
        for impl in reversed(self.pm.hook.hpatk_register_commands.get_hookimpls()):
            if self.trace:
                print(f"hpatk: calling hpatk_register_commands of plugin '{impl.plugin_name}'",
                      file=sys.stderr)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._mark_broken(impl.plugin_name, exc)


def _plugin_dirs() -> list[Path]:
    raw = os.environ.get("HPATK_PLUGINS_DIR", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def _own_dist() -> str:
    return "hpatk"


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    builtins_only = os.environ.get("HPATK_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if builtins_only and dist != _own_dist():
            continue
        name = ep.name if dist == _own_dist() else f"{dist}.{ep.name}" if dist else ep.name
        if name in infos or pm.has_plugin(name):
            continue
        info = PluginInfo(name=name, dist=dist, version=version)
        infos[name] = info
        try:
            module = ep.load()
            pm.register(module, name=name)
        except Exception as exc:  # a plugin that fails to import is reported, not fatal
            info.status = "broken"
            info.error = f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]


def _load_plugin_dirs(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    for folder in _plugin_dirs():
        if not folder.is_dir():
            raise RegistryError(f"plugins dir '{folder}' is not a folder")
        for path in sorted(folder.glob("*.py")):
            name = f"plugins-dir:{path.stem}"
            info = PluginInfo(name=name, dist=None, version=None, source="plugins-dir")
            infos[name] = info
            try:
                spec = importlib.util.spec_from_file_location(f"hpatk_plugins_dir.{path.stem}",
                                                              path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                pm.register(module, name=name)
            except Exception as exc:
                info.status = "broken"
                info.error = f"{type(exc).__name__}: {exc} ({path})"


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A plugin manager with the hookspecs, every entry point and plugins-dir file loaded."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
    _load_plugin_dirs(pm, infos)
    try:
        pm.check_pending()  # a misspelled hook name is an error, not a silent no-op
    except pluggy.PluginValidationError as exc:
        raise RegistryError(f"plugin hook error: {exc}") from exc
    return pm, infos


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry; plugins are loaded on the first call."""
    global _registry
    with _registry_lock:
        if _registry is None:
            pm, infos = make_plugin_manager()
            _registry = Registry(pm, infos)
        return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (the next :func:`get_registry` loads them again)."""
    global _registry
    with _registry_lock:
        _registry = None
