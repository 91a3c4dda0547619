"""Compatibility-aware search spaces: architecture specs, sampling and mutation, model builders.

The names below are imported on first use (PEP 562), so that ``search_space.errors`` and
``search_space.registry``, which every package imports, do not load PyTorch and timm: the lock of an
output folder and the configuration's checks run without them, as the registries intend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each public name and the module that defines it.
_EXPORTS = {
    "ArchSpec": "search_space.spec",
    "BudgetInfeasibleError": "search_space.budget",
    "BudgetedSpace": "search_space.budget",
    "OutOfSpaceError": "search_space.space",
    "QueryEmbeddingNet": "search_space.builder",
    "SearchSpace": "search_space.space",
    "SpecFormatError": "search_space.spec",
    "StageChoices": "search_space.space",
    "StageSpec": "search_space.spec",
    "build_query_model": "search_space.builder",
    "create_space": "search_space.registry",
    "estimate_flops": "search_space.flops",
    "estimate_mflops": "search_space.flops",
    "list_spaces": "search_space.registry",
    "register_space": "search_space.registry",
    "within_budget": "search_space.budget",
}

__all__ = [
    "ArchSpec",
    "BudgetInfeasibleError",
    "BudgetedSpace",
    "OutOfSpaceError",
    "QueryEmbeddingNet",
    "SearchSpace",
    "SpecFormatError",
    "StageChoices",
    "StageSpec",
    "build_query_model",
    "create_space",
    "estimate_flops",
    "estimate_mflops",
    "list_spaces",
    "register_space",
    "within_budget",
]

if TYPE_CHECKING:
    from search_space.budget import BudgetedSpace, BudgetInfeasibleError, within_budget
    from search_space.builder import QueryEmbeddingNet, build_query_model
    from search_space.flops import estimate_flops, estimate_mflops
    from search_space.registry import create_space, list_spaces, register_space
    from search_space.space import OutOfSpaceError, SearchSpace, StageChoices
    from search_space.spec import ArchSpec, SpecFormatError, StageSpec


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search_space' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
