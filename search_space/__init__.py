"""Compatibility-aware search spaces: architecture specs, sampling and mutation, model builders."""

from search_space.builder import QueryEmbeddingNet, build_query_model
from search_space.registry import create_space, list_spaces, register_space
from search_space.space import OutOfSpaceError, SearchSpace, StageChoices
from search_space.spec import ArchSpec, SpecFormatError, StageSpec

__all__ = [
    "ArchSpec",
    "OutOfSpaceError",
    "QueryEmbeddingNet",
    "SearchSpace",
    "SpecFormatError",
    "StageChoices",
    "StageSpec",
    "build_query_model",
    "create_space",
    "list_spaces",
    "register_space",
]
