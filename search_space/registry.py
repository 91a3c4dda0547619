"""A registry of named search spaces with one factory, in the manner of timm's ``create_model``."""

from __future__ import annotations

from typing import Callable, Protocol

from search_space.space import SearchSpace


class SpaceBuilder(Protocol):
    def __call__(self, *, embed_dim: int, in_chans: int) -> SearchSpace: ...


_SPACES: dict[str, SpaceBuilder] = {}


def register_space(builder: Callable[..., SearchSpace]) -> Callable[..., SearchSpace]:
    """Register ``builder`` under its function name; the name is the space's public id."""
    name = builder.__name__
    if name in _SPACES:
        raise ValueError(f"search space '{name}' is registered twice")
    _SPACES[name] = builder
    return builder


def list_spaces() -> list[str]:
    _load_builtin_spaces()
    return sorted(_SPACES)


def create_space(name: str, *, embed_dim: int, in_chans: int) -> SearchSpace:
    """Instantiate the named space for a gallery of dimension ``embed_dim`` and ``in_chans`` inputs."""
    _load_builtin_spaces()
    if name not in _SPACES:
        raise KeyError(f"unknown search space '{name}': allowed values are {sorted(_SPACES)}")
    if embed_dim < 1 or in_chans < 1:
        raise ValueError(f"embed_dim and in_chans must be positive, got {embed_dim} and {in_chans}")
    return _SPACES[name](embed_dim=embed_dim, in_chans=in_chans)


def _load_builtin_spaces() -> None:
    import search_space.spaces  # noqa: F401  (registers the built-in spaces on import)
