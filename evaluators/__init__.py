"""Evaluators: retrieval metrics on FAISS, model complexity and latency, Pareto math."""

from evaluators.complexity import FLOPS_CONVENTION, ComplexityReport, count_complexity, measure_cpu_latency_ms
from evaluators.knn import FaissInnerProductKNN, faiss_gpu_count
from evaluators.pareto import dominates, pareto_front
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
    "measure_cpu_latency_ms",
    "pareto_front",
]
