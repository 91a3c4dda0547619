"""What a candidate trial reports to Ray Tune, defined once for the worker and the driver.

This module imports neither torch nor Ray: the driver's callbacks and ``cmpnas pareto`` read
reports and checkpoints without loading the trainable.

Rules of the report (``workers.trial.run_candidate_trial``):
* every epoch reports one result with ``epoch`` (0 for a zero-shot candidate, evaluated as
  inherited), the training statistics of the epoch (``loss``, ``images_per_second``,
  ``epoch_seconds``, ``loss_<name>`` per loss) and the evaluation task's cross-model metrics
  (``cross_*``, see ``evaluators.tasks``), together with a checkpoint holding ``MODEL_FILE`` and
  ``SPEC_FILE``;
* the **final result** is the last epoch's: it adds the homogeneous metrics (``homo_*``), the
  cost (``flops``, ``mflops``, ``params``, ``cost_reduction``, ``latency_ms``) and where and how
  the trial ran (``FINAL_PARAMS``). A trial that a scheduler stopped early never reports one, so
  its accuracy is not final and its cost unmeasured: ``is_final_result`` tells them apart.
"""

from __future__ import annotations

from typing import Any, Mapping

# The candidate's weights (safetensors, the architecture in its metadata) and its architecture (JSON).
MODEL_FILE = "model.safetensors"
SPEC_FILE = "arch.json"

# Present in the final result only: the cost and the homogeneous metrics.
FINAL_ONLY_KEYS = ("mflops", "homo_r1")
# Logged on every epoch; besides these, every cross-model metric of the task (``cross_*``).
EPOCH_METRICS = ("loss", "cross_r1", "cross_r5", "cross_map", "images_per_second", "epoch_seconds")
# Logged once, from the final result; besides these, every ``cross_*`` and ``homo_*`` metric.
FINAL_METRICS = (
    "cross_r1", "cross_r5", "cross_map", "homo_r1", "homo_r5", "homo_map", "flops", "mflops", "params",
    "cost_reduction", "latency_ms", "trial_seconds", "gpu_max_memory_mb", "trial_cpu_seconds",
)
# Strings of the final result: where and how the trial ran, and what fvcore skipped.
FINAL_PARAMS = ("flops_convention", "flops_skipped_ops", "device", "node_id", "mode")


def is_final_result(result: Mapping[str, Any] | None) -> bool:
    """The last epoch's result of a trial that ran to the end (see the module's rules)."""
    return bool(result) and all(key in result for key in FINAL_ONLY_KEYS)


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What to log for this epoch of a result."""
    return {key: value for key, value in result.items() if key in EPOCH_METRICS or key.startswith("cross_")}


def final_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What to log once for a final result, each name prefixed ``final_``."""
    return {f"final_{key}": value for key, value in result.items()
            if key in FINAL_METRICS or key.startswith(("cross_", "homo_"))}


def final_params(result: Mapping[str, Any]) -> dict[str, Any]:
    return {key: result.get(key, "") for key in FINAL_PARAMS}
