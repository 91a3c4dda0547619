"""Trial schedulers: run every trial to the last epoch (fifo), or stop weak ones early (ASHA).

ASHA (Li et al. 2020, Ray Tune's ``ASHAScheduler``) compares trials at rungs of
``grace_period * reduction_factor**k`` epochs on the search metric (cross-model mAP, reported
every epoch) and stops a trial below the top ``1/reduction_factor`` of those that reached the
rung before it. A stopped trial ends cleanly with no final metrics: its MLflow child run is
FINISHED and tagged ``cmpnas.stopped_early=true``, and the Pareto report skips it.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from orchestrator.config.schema import SearchConfig

TIME_ATTR = "epoch"


def create_scheduler(search: SearchConfig, epochs: int) -> TrialScheduler:
    """Metric and mode come from TuneConfig (Tune refuses them twice)."""
    if search.scheduler == "asha":
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=epochs, grace_period=search.asha.grace_period,
                             reduction_factor=search.asha.reduction_factor)
    return FIFOScheduler()
