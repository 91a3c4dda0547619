"""Registries of named parts, one pattern for all, in the manner of timm's model registry.

Search spaces, data sources, losses, evaluation tasks and search strategies are each chosen by a
name in the config; each kind has one ``Registry`` (this module holds the search spaces') and one
factory over it. The rules:

- Names are unique: registering a name twice raises ``ValueError`` naming both entries, since a
  silent replacement would change what an existing config means.
- ``register(name)`` is a decorator. Without a name, an entry is registered under its ``name``
  attribute when it has one (the classes of losses, tasks and strategies declare it), else under
  its ``__name__`` (builder functions such as the search spaces).
- Built-ins register themselves when their module is imported. A registry imports its
  ``builtin_modules`` on the first lookup, so user code may register its own entries beside them,
  before or after.
- A registry is a read-only ``Mapping`` from name to entry. Looking up an unknown name raises
  ``UnknownNameError`` (a ``KeyError`` and a ``ValueError``), which reads
  ``unknown search_space.name 'vit'; allowed values are ['mnv3_28', 'mnv3_64']``: the config field,
  the value given and the values allowed there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from search_space.space import SearchSpace

Entry = TypeVar("Entry")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered. A ``KeyError`` for mapping lookups and a ``ValueError`` for
    callers that validate input; shown as the plain message, not as KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, Entry]):
    """Named entries of one ``kind`` (e.g. "search space"), chosen by the config ``field``
    (e.g. "search_space.name"); ``builtin_modules`` register the built-ins when imported."""

    def __init__(self, kind: str, field: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.field = field
        self._builtin_modules = builtin_modules
        self._builtins_loaded = False
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None) -> Callable[[Entry], Entry]:
        """Decorator that registers its target under ``name`` (default: see the module docstring)."""

        def decorator(entry: Entry) -> Entry:
            key = name if name is not None else _default_name(entry)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice: {_describe(self._entries[key])} and "
                                 f"{_describe(entry)}; rename one of them")
            self._entries[key] = entry
            return entry

        return decorator

    def unregister(self, name: str) -> Entry:
        """Remove and return the entry ``name``: for tests and plugins that registered one themselves."""
        entry = self[name]
        del self._entries[name]
        return entry

    def names(self) -> list[str]:
        return sorted(self)

    def check(self, name: str) -> str:
        """``name`` itself when it is registered, else ``UnknownNameError``: for config validators."""
        if name not in self:
            raise self._unknown(name)
        return name

    def __getitem__(self, name: str) -> Entry:
        if name not in self:
            raise self._unknown(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_builtins()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.field!r}, names={self.names()})"

    def _unknown(self, name: object) -> UnknownNameError:
        return UnknownNameError(f"unknown {self.field} {name!r}; allowed values are {sorted(self._entries)}")

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        # Marked first: a built-in module may look names up while it registers its own.
        self._builtins_loaded = True
        try:
            for module in self._builtin_modules:
                importlib.import_module(module)
        except BaseException:
            self._builtins_loaded = False  # the next lookup raises the same import error, not a short list
            raise


def _default_name(entry: object) -> str:
    declared = getattr(entry, "name", None)
    return declared if isinstance(declared, str) else entry.__name__


def _describe(entry: object) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"


class SpaceBuilder(Protocol):
    def __call__(self, *, embed_dim: int, in_chans: int) -> SearchSpace: ...


SPACES: Registry[SpaceBuilder] = Registry("search space", "search_space.name",
                                          builtin_modules=("search_space.spaces",))


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
