"""Catalogues: the names one plugin kind has registered, and what creates each."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hpatk.core.errors import RegistryError

KINDS = ("enhancers", "augmentations", "backbones", "losses", "synthesizers")
def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'a', 'b'?`` for up to three close matches of ``name``, or ""."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


SINGULAR = {"enhancers": "enhancer", "augmentations": "augmentation",
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


class Catalog:
    """The names registered for one kind (enhancers, augmentations, backbones, losses)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        # broken plugins that could have registered names of this kind -> their error
        self.broken: dict[str, str] = {}

    def add(self, entry: Entry) -> None:
        """Add ``entry``; a name or alias another plugin has is an error naming both."""
        if entry.name in entry.aliases or len(set(entry.aliases)) != len(entry.aliases):
            raise RegistryError(f"plugin '{entry.plugin}' gives {SINGULAR[self.kind]} "
                                f"'{entry.name}' a repeated alias")
        for key in (entry.name, *entry.aliases):
            owner = self.owner(key)
            if owner is not None:
                raise RegistryError(
                    f"{SINGULAR[self.kind]} name '{key}' is registered twice: by plugin "
                    f"'{owner.plugin}' and by plugin '{entry.plugin}'"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def owner(self, key: str) -> Entry | None:
        """The entry registered under ``key`` (a name or an alias), exactly; else None."""
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def keys(self) -> set[str]:
        """Every registered name and alias."""
        return {*self._entries, *self._aliases}

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
        entry = self.owner(name)
        if entry is not None:
            return entry
        if ":" in name:
            pattern = self.owner(name.split(":", 1)[0] + ":*")
            if pattern is not None:
                return pattern
        hint = did_you_mean(name, sorted([*self._entries, *self._aliases]))
        broken = "".join(f"; plugin '{p}' is broken ({e}) and may provide it"
                         for p, e in sorted(self.broken.items()))
        raise RegistryError(
            f"unknown {SINGULAR[self.kind]} '{name}'{hint} (known: {', '.join(self.names())})"
            f"{broken}"
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
                raise RegistryError(f"{SINGULAR[self.kind]} '{name}' needs a name after ':'")
            return entry.factory(variant=variant, **params)
        return entry.factory(**params)


class Registration:
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
