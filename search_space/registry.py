"""Registries of named parts, one pattern for all, in the manner of timm's model registry.

Search spaces, data sources, gallery sources, losses, evaluation tasks and search strategies are
each chosen by a name in the config; each kind has one ``Registry`` (this module holds the search
spaces') and one factory over it. The rules:

- Names are unique: registering a name twice raises ``ValueError`` naming both entries, since a
  silent replacement would change what an existing config means. A built-in name (below) may be
  registered only by the module that declares it.
- ``register(name)`` is a decorator. Without a name, an entry is registered under its ``name``
  attribute when it has one (the classes of losses, tasks and strategies declare it), else under
  its ``__name__`` (builder functions such as the search spaces).
- Built-ins are declared by name with the module that registers them (``builtins``): the names
  are known without importing anything, so the configuration checks a name against the registry
  without importing a single implementation. The module is imported when its entry is first
  looked up (``registry[name]``), and registers itself then; user code may register its own
  entries beside the built-ins, before or after. ``tests/search_space/test_registry.py`` checks
  that every declared module registers exactly the names declared for it.
- A registry is a read-only ``Mapping`` from name to entry; ``names()``, ``in`` and ``check`` never
  import. Looking up an unknown name raises ``UnknownNameError`` (a ``KeyError`` and a
  ``ValueError``), which reads ``unknown search_space.name 'vit'; allowed values are ['mnv3_28',
  'mnv3_64']``: the config field, the value given and the values allowed there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from search_space.errors import CmpnasError
from search_space.space import SearchSpace

Entry = TypeVar("Entry")


class UnknownNameError(CmpnasError, KeyError, ValueError):
    """A name that is not registered. A ``KeyError`` for mapping lookups and a ``ValueError`` for
    callers that validate input; shown as the plain message, not as KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, Entry]):
    """Named entries of one ``kind`` (e.g. "search space"), chosen by the config ``field``
    (e.g. "search_space.name"); ``builtins`` maps each built-in name to the module that registers it."""

    def __init__(self, kind: str, field: str, builtins: Mapping[str, str] | None = None):
        self.kind = kind
        self.field = field
        self.builtins: dict[str, str] = dict(builtins or {})
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None) -> Callable[[Entry], Entry]:
        """Decorator that registers its target under ``name`` (default: see the module docstring)."""

        def decorator(entry: Entry) -> Entry:
            key = name if name is not None else _default_name(entry)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice: {_describe(self._entries[key])} and "
                                 f"{_describe(entry)}; rename one of them")
            declared = self.builtins.get(key)
            if declared is not None and getattr(entry, "__module__", None) != declared:
                raise ValueError(f"{self.kind} {key!r} is a built-in name, registered by {declared}; "
                                 f"{_describe(entry)} cannot take it: rename it")
            self._entries[key] = entry
            return entry

        return decorator

    def unregister(self, name: str) -> Entry:
        """Remove and return the entry ``name``: for tests and plugins that registered one themselves."""
        if name not in self._entries:
            raise self._unknown(name)
        return self._entries.pop(name)

    def names(self) -> list[str]:
        return sorted(self.builtins.keys() | self._entries.keys())

    def check(self, name: str) -> str:
        """``name`` itself when it is declared or registered, else ``UnknownNameError``: for config
        validators. Imports nothing."""
        if name not in self:
            raise self._unknown(name)
        return name

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries and name in self.builtins:
            importlib.import_module(self.builtins[name])
            if name not in self._entries:
                raise RuntimeError(f"{self.builtins[name]} is declared to register {self.kind} {name!r} and did not")
        if name not in self._entries:
            raise self._unknown(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.builtins or name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.field!r}, names={self.names()})"

    def _unknown(self, name: object) -> UnknownNameError:
        return UnknownNameError(f"unknown {self.field} {name!r}; allowed values are {self.names()}")


def _default_name(entry: object) -> str:
    declared = getattr(entry, "name", None)
    return declared if isinstance(declared, str) else entry.__name__


def _describe(entry: object) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"


class SpaceBuilder(Protocol):
    def __call__(self, *, embed_dim: int, in_chans: int) -> SearchSpace: ...


SPACES: Registry[SpaceBuilder] = Registry(
    "search space", "search_space.name",
    builtins={name: "search_space.spaces" for name in ("mnv3_28", "mnv3_64", "ofa_mnv3_224")},
)


def register_space(builder: Callable[..., SearchSpace]) -> Callable[..., SearchSpace]:
    """Register ``builder`` under its function name; the name is the space's public id."""
    return SPACES.register(builder.__name__)(builder)


def list_spaces() -> list[str]:
    return SPACES.names()


def create_space(name: str, *, embed_dim: int, in_chans: int) -> SearchSpace:
    """Instantiate the named space for a gallery of dimension ``embed_dim`` and ``in_chans`` inputs."""
    builder = SPACES[name]
    if embed_dim < 1 or in_chans < 1:
        raise ValueError(f"embed_dim and in_chans must be positive, got {embed_dim} and {in_chans}")
    return builder(embed_dim=embed_dim, in_chans=in_chans)
