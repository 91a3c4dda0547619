"""Compatibility-aware search spaces: architecture specs, sampling and mutation, model builders."""

from search_space.budget import BudgetedSpace, BudgetInfeasibleError, within_budget
from search_space.builder import QueryEmbeddingNet, build_query_model
from search_space.flops import estimate_flops, estimate_mflops
from search_space.registry import create_space, list_spaces, register_space
from search_space.space import OutOfSpaceError, SearchSpace, StageChoices
from search_space.spec import ArchSpec, SpecFormatError, StageSpec

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
