"""Search convergence on the parent run, after every trial that ends: hypervolume and predictor quality.

Logged with ``step`` = trials ended so far, so MLflow's metric chart of the parent run shows the
search converging:

* ``hypervolume``: area dominated by the fully trained candidates in (search metric, default
  cross-model mAP; MFLOPs), bounded by the reference point (metric 0, paragon MFLOPs), in
  metric-points x MFLOPs (see
  ``evaluators.hypervolume``); ``hypervolume_fraction`` divides it by 100 x paragon MFLOPs, the
  area of a perfect zero-cost model, so searches with different paragons compare;
* ``front_size``: candidates on the running Pareto front;
* ``predictor_spearman``: Spearman correlation between the accuracy predictor's forecast, made
  before each trial ran, and the search metric the trial measured (from 3 pairs on);
  ``predictor_pairs`` and ``predictor_predictions`` count the pairs and the forecasts made.

Trials that ASHA stopped early or that failed add no point (their accuracy is not final and their
cost unmeasured; ``workers.trial_report.is_final_result``) but do advance the step. The metrics go
through the search's journal, keyed by trial, so an outage of the tracking server loses none and a
resumed search does not log a trial's step twice.
"""

from __future__ import annotations

import math
import warnings

from scipy.stats import spearmanr

from evaluators import hypervolume_2d, pareto_front
from orchestrator.tracking.callbacks import JournaledCallback, tracking_must_not_fail_trials
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.journal import PARENT, TrackingJournal
from search_space import ArchSpec
from workers.trial_report import DEFAULT_SCORING, Scoring, is_final_result

COST = "mflops"
SENSES = ("max", "min")
MIN_SPEARMAN_PAIRS = 3


def hypervolume_reference(paragon_mflops: float) -> tuple[float, float]:
    """cmpnas's reference point: no accuracy, the paragon's cost."""
    return (0.0, paragon_mflops)


class SearchConvergenceCallback(JournaledCallback):
    def __init__(self, tracker: SearchTracker, parent_run_id: str, paragon_mflops: float,
                 journal: TrackingJournal | None = None, scoring: Scoring = DEFAULT_SCORING,
                 predictions: dict[str, float] | None = None):
        """``scoring.metric``: the search metric, the accuracy axis of the front and what the
        predictor forecasts; ``predictions``: the predictor's forecasts by arch_id, as it makes them."""
        super().__init__(tracker, parent_run_id, journal)
        self.metric = scoring.metric
        self.reference = hypervolume_reference(paragon_mflops)
        self.predictions = predictions if predictions is not None else {}
        self.points: list[tuple[float, float]] = []
        self.pairs: list[tuple[float, float]] = []
        self.ended = 0
        self.stopped_early = 0

    @tracking_must_not_fail_trials
    def on_trial_complete(self, iteration, trials, trial, **info):
        if not is_final_result(trial.last_result):
            self.stopped_early += 1
        self._record(trial, trial.last_result)

    @tracking_must_not_fail_trials
    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, None)

    def _record(self, trial, result: dict | None) -> None:
        self.ended += 1
        if is_final_result(result) and self.metric in result:
            self.points.append((float(result[self.metric]), float(result[COST])))
            arch_id = ArchSpec.from_json(trial.config["arch"]).arch_id
            if arch_id in self.predictions:
                self.pairs.append((self.predictions[arch_id], float(result[self.metric])))
        # Keyed by trial: a trial whose end a resumed session replays is logged once. (Hand-made
        # trials without an id, as in unit tests, fall back to the step.)
        self.journal.log_metrics(PARENT, self.metrics(), step=self.ended,
                                 key=f"{PARENT}/convergence/{getattr(trial, 'trial_id', self.ended)}")

    def metrics(self) -> dict[str, float]:
        volume = hypervolume_2d(self.points, self.reference, SENSES)
        metrics = {"hypervolume": volume, "hypervolume_fraction": volume / (100.0 * self.reference[1]),
                   "front_size": float(len(pareto_front(self.points, SENSES)))}
        if self.predictions:
            metrics["predictor_predictions"] = float(len(self.predictions))
        if len(self.pairs) >= MIN_SPEARMAN_PAIRS:
            with warnings.catch_warnings():  # a constant list has no rank order: NaN, not logged
                warnings.simplefilter("ignore")
                correlation = float(spearmanr([p for p, _ in self.pairs], [m for _, m in self.pairs]).statistic)
            if not math.isnan(correlation):
                metrics["predictor_spearman"] = correlation
            metrics["predictor_pairs"] = float(len(self.pairs))
        return metrics
