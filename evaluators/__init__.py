"""Evaluators: retrieval and verification metrics on FAISS, model complexity and latency, Pareto math,
hypervolume."""

from evaluators.complexity import FLOPS_CONVENTION, ComplexityReport, count_complexity
from evaluators.hypervolume import hypervolume_2d
from evaluators.knn import FaissInnerProductKNN, faiss_gpu_count
from evaluators.pareto import dominates, pareto_front
from evaluators.retrieval import RetrievalEvaluator, RetrievalMetrics, chance_level
from evaluators.tasks import EvaluationTask, create_task, list_tasks, register_task, searchable_metrics
from evaluators.verification import OperatingPoint, VerificationEvaluator, VerificationMetrics, tar_at_far

__all__ = [
    "FLOPS_CONVENTION",
    "ComplexityReport",
    "EvaluationTask",
    "FaissInnerProductKNN",
    "OperatingPoint",
    "RetrievalEvaluator",
    "RetrievalMetrics",
    "VerificationEvaluator",
    "VerificationMetrics",
    "chance_level",
    "count_complexity",
    "create_task",
    "dominates",
    "faiss_gpu_count",
    "hypervolume_2d",
    "list_tasks",
    "pareto_front",
    "register_task",
    "searchable_metrics",
    "tar_at_far",
]
