"""Evaluators: retrieval metrics on FAISS, model complexity and latency, Pareto math, hypervolume, rank correlation."""

from evaluators.complexity import FLOPS_CONVENTION, ComplexityReport, count_complexity, measure_cpu_latency_ms
from evaluators.hypervolume import hypervolume_2d
from evaluators.knn import FaissInnerProductKNN, faiss_gpu_count
from evaluators.pareto import dominates, pareto_front
from evaluators.rank_correlation import spearman
from evaluators.retrieval import RetrievalEvaluator, RetrievalMetrics

__all__ = [
    "FLOPS_CONVENTION",
    "ComplexityReport",
    "FaissInnerProductKNN",
    "RetrievalEvaluator",
    "RetrievalMetrics",
    "count_complexity",
    "dominates",
    "faiss_gpu_count",
    "hypervolume_2d",
    "measure_cpu_latency_ms",
    "pareto_front",
    "spearman",
]
