"""What a candidate trial reports to Ray Tune, defined once for the worker and the driver.

This module imports neither torch nor Ray: the driver's callbacks and ``cmpnas pareto`` read
reports and checkpoints without loading the trainable.

Rules of the report (``workers.trial.run_candidate_trial``):
* every epoch reports one result with ``epoch`` (0 for a zero-shot candidate, evaluated as
  inherited), the training statistics of the epoch (``loss``, ``images_per_second``,
  ``epoch_seconds``, ``loss_<name>`` per loss) and the evaluation task's cross-model metrics
  (``cross_*``, see ``evaluators.tasks``), together with a checkpoint holding ``MODEL_FILE`` and
  ``SPEC_FILE``; with ``evaluation.agreement_k`` also the label-free ``cross_agreement`` on the same
  images, or on the pool images held back for it (``data.unlabelled.agreement_size``)
  (``evaluators.agreement``; its final result adds ``homo_agreement``), which ``search.metric``
  may rank on like any ``cross_*``;
* the **final result** is the last epoch's: it adds the homogeneous metrics (``homo_*``), the
  cost (``flops``, ``mflops``, ``params``, ``cost_reduction``, ``latency_ms``) and where and how
  the trial ran (``FINAL_PARAMS``); with a validation split (``data.validation_size``), where
  ``cross_*``/``homo_*`` are measured on the validation halves, also the held-out query/gallery
  splits' ``heldout_cross_*`` and ``heldout_homo_*``: reported, never ranked on (the
  compatibility verdict and ``search.metric`` read the validation ones). A trial that a
  scheduler stopped early never reports one, so its accuracy is not final and its cost
  unmeasured: ``is_final_result`` tells them apart.

The compatibility check of a final result (``Scoring.verdict``, the one place of the rule):
with ``<m>`` the searched metric without its prefix (``search.metric`` = ``cross_<m>``, e.g.
``cross_map`` -> ``map``, ``cross_tar_far_1e-2`` -> ``tar_far_1e-2``), ``ratio`` =
``evaluation.compatibility_ratio`` (default 0.5), ``paragon_ratio`` = ``evaluation.paragon_ratio``
(default 0.5) and ``margin`` = ``evaluation.chance_margin`` (default 0.1), a trial **fails** when

    final cross_<m>  <  ratio x final homo_<m>                       (not the gallery's space), or
    final cross_<m>  <  paragon_ratio x paragon_<m>                  (far below the gallery model), or
    final cross_<m>  <  chance_<m> + margin x (100 - chance_<m>)     (hardly better than chance)

The first alone is meaningless for a candidate that learned nothing: at chance on both sides,
cross-model and homogeneous scores are alike, and it would pass. So the candidate is also judged
against the gallery model itself (``paragon_<m>``: its own score on the same split) and against
chance (``chance_<m>``: the score of a random ranking on that split, known for R@1, R@5 and mAP:
``evaluators.retrieval.chance_level``); a reference that is not known (a recorded search that
predates it, a metric without a chance level) or switched off (``paragon_ratio`` 0, ``margin``
null) is not applied. It **passes** otherwise (equality passes). There is **no verdict** (None) for
a result that is not final (stopped early, or an epoch before the last), that lacks either metric
or holds a NaN, or whose homogeneous metric is zero or below while no reference is known: with
nothing to compare against, ``cross < ratio x 0`` could never fail, and calling such a candidate
compatible would hide one that learned no embedding at all. ``COMPATIBILITY_FAILURE_CAUSES`` says
what usually makes a candidate fail and which settings to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

# The candidate's weights (safetensors, the architecture in its metadata) and its architecture (JSON).
MODEL_FILE = "model.safetensors"
SPEC_FILE = "arch.json"

# Present in the final result only: the cost and the homogeneous metrics.
FINAL_ONLY_KEYS = ("mflops", "homo_r1")
# Logged on every epoch; besides these, every cross-model metric of the task (``cross_*``).
EPOCH_METRICS = ("loss", "cross_r1", "cross_r5", "cross_map", "images_per_second", "epoch_seconds",
                 "loader_wait_seconds")
# Logged once, from the final result; besides these, every ``cross_*`` and ``homo_*`` metric.
FINAL_METRICS = (
    "cross_r1", "cross_r5", "cross_map", "homo_r1", "homo_r5", "homo_map", "flops", "mflops", "params",
    "cost_reduction", "latency_ms", "trial_seconds", "gpu_max_memory_mb", "trial_cpu_seconds", "peak_rss_mb",
    "train_images",
)
# Strings of the final result: where and how the trial ran, what fvcore skipped, how latency was timed.
FINAL_PARAMS = ("flops_convention", "flops_skipped_ops", "latency_method", "device", "node_id", "mode")


def is_final_result(result: Mapping[str, Any] | None) -> bool:
    """The last epoch's result of a trial that ran to the end (see the module's rules)."""
    return bool(result) and all(key in result for key in FINAL_ONLY_KEYS)


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What to log for this epoch of a result."""
    # unlabelled_loss_<name>: the pool's label-free losses (data.unlabelled), to see the pool train.
    return {key: value for key, value in result.items()
            if key in EPOCH_METRICS or key.startswith(("cross_", "unlabelled_loss_"))}


def final_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What to log once for a final result, each name prefixed ``final_``."""
    return {f"final_{key}": value for key, value in result.items()
            if key in FINAL_METRICS or key.startswith(("cross_", "homo_", "heldout_"))}


def final_params(result: Mapping[str, Any]) -> dict[str, Any]:
    return {key: result.get(key, "") for key in FINAL_PARAMS}


# -- how a search scores and judges its candidates (see the module's rules) -------------------------
COMPATIBILITY_PASSED = "passed"
COMPATIBILITY_FAILED = "failed"
CompatibilityVerdict = Literal["passed", "failed"]
# What usually makes a candidate fail the check, and the settings to change.
COMPATIBILITY_FAILURE_CAUSES = (
    "too few optimizer steps (raise training.epochs, or training.finetune_epochs in mode inherit, or "
    "training.min_steps), compatibility loss weights too low (raise training.loss_weights cosine_alignment "
    "and bct_influence), or a learning rate too high (lower training.lr)"
)


def homogeneous_metric(metric: str) -> str:
    """The homogeneous counterpart of a cross-model metric: ``cross_map`` -> ``homo_map``."""
    if not metric.startswith("cross_"):
        raise ValueError(f"the compatibility check compares a cross-model metric (cross_*), got {metric!r}")
    return "homo_" + metric.removeprefix("cross_")


@dataclass(frozen=True)
class Scoring:
    """How a search scores its candidates: the cross-model ``metric`` it maximises
    (``search.metric``) and the ``compatibility_ratio`` of the compatibility check
    (``evaluation.compatibility_ratio``). Built once per search (``CmpnasConfig.scoring``), or from
    a recorded search's params (``orchestrator.results.front``); the defaults are stated here only."""

    metric: str = "cross_map"
    compatibility_ratio: float = 0.5
    paragon_ratio: float = 0.5
    chance_margin: float | None = 0.1
    # The references of this search's split (None: not known): the gallery model's <m> and chance's.
    paragon: float | None = None
    chance: float | None = None

    def __post_init__(self) -> None:
        homogeneous_metric(self.metric)  # refuses a metric that is not cross-model

    @property
    def homogeneous(self) -> str:
        """``homo_<m>``: the searched metric with the query model on both sides."""
        return homogeneous_metric(self.metric)

    @property
    def measure(self) -> str:
        """``<m>``: the searched metric without its prefix (``map`` for ``cross_map``), as the paragon's is named."""
        return self.metric.removeprefix("cross_")

    def with_references(self, paragon: float | None, chance: float | None) -> Scoring:
        """This scoring judging also against the gallery model's ``<m>`` and chance's on the search's split."""
        known = [value if value is not None and math.isfinite(value) else None for value in (paragon, chance)]
        return replace(self, paragon=known[0], chance=known[1])

    @property
    def paragon_floor(self) -> float | None:
        """``paragon_ratio`` x the paragon's ``<m>``: below it a candidate fails; None when not applied."""
        return self.paragon_ratio * self.paragon if self.paragon is not None and self.paragon_ratio > 0 else None

    @property
    def chance_floor(self) -> float | None:
        """``chance + chance_margin x (100 - chance)``: below it a candidate fails; None when not applied."""
        if self.chance is None or self.chance_margin is None:
            return None
        return self.chance + self.chance_margin * (100.0 - self.chance)

    @property
    def rule(self) -> str:
        """The check in words: ``cross_map < 0.5 x homo_map``, and the references' floors when known."""
        parts = [f"{self.metric} < {self.compatibility_ratio:g} x {self.homogeneous}"]
        if self.paragon_floor is not None:
            parts.append(f"{self.metric} < {self.paragon_ratio:g} x the gallery model's {self.paragon:.2f} "
                         f"(= {self.paragon_floor:.2f})")
        if self.chance_floor is not None:
            parts.append(f"{self.metric} < {self.chance_floor:.2f} (chance {self.chance:.2f} + "
                         f"{self.chance_margin:g} x the way to 100)")
        return " or ".join(parts)

    def verdict(self, result: Mapping[str, Any] | None) -> CompatibilityVerdict | None:
        """``"failed"`` when the final ``cross_<m>`` is below any floor of the module's rules
        (``compatibility_ratio`` x the final ``homo_<m>``, the paragon's, chance's), ``"passed"``
        otherwise, None when there is nothing to judge (see the module's rules)."""
        if not is_final_result(result) or self.metric not in result or self.homogeneous not in result:
            return None
        cross, homo = float(result[self.metric]), float(result[self.homogeneous])
        if math.isnan(cross) or math.isnan(homo):
            return None
        references = [floor for floor in (self.paragon_floor, self.chance_floor) if floor is not None]
        if any(cross < floor for floor in references):
            return COMPATIBILITY_FAILED
        if homo <= 0:
            return COMPATIBILITY_PASSED if references else None
        return COMPATIBILITY_FAILED if cross < self.compatibility_ratio * homo else COMPATIBILITY_PASSED

    def describe_failure(self, result: Mapping[str, Any]) -> str:
        """One line on a failed check: the values compared, the likely causes and the settings to change."""
        ratio, cross, homo = self.compatibility_ratio, float(result[self.metric]), float(result[self.homogeneous])
        if self.chance_floor is not None and cross < self.chance_floor:
            compared = (f"{self.metric} {cross:.2f} < {self.chance_floor:.2f}, hardly above chance ({self.chance:.2f}): "
                        "the candidate learned next to nothing")
        elif self.paragon_floor is not None and cross < self.paragon_floor:
            compared = (f"{self.metric} {cross:.2f} < {self.paragon_ratio:g} x the gallery model's {self.paragon:.2f} "
                        f"(= {self.paragon_floor:.2f})")
        else:
            compared = f"{self.metric} {cross:.2f} < {ratio:g} x {self.homogeneous} {homo:.2f} (= {ratio * homo:.2f})"
        return f"{compared}; likely causes: {COMPATIBILITY_FAILURE_CAUSES}"


DEFAULT_SCORING = Scoring()
