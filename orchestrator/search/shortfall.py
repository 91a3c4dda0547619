"""A search that ends with fewer candidates than it asked for: why, what to change, and its record.

An empty or cut-short search is not a success. Rules:

- asked: ``search.num_candidates``. A trial *ran* when it ended without an error: trained to its
  last epoch, or stopped early by ASHA on purpose (``search.scheduler: asha``).
- once every trial has ended, a search falls short when fewer trials ran than were asked, or when
  no candidate finished (an empty front). The reasons, first match first: the strategy found no
  new architecture within the budget (fewer trials started than asked), trials failed after their
  retries, no trial trained to its last epoch, every finished candidate failed the compatibility
  check (``workers.trial_report.Scoring.verdict``: a search whose candidates are all at chance, or far
  below the gallery model, found nothing to deploy);
- a search whose trials did not all end (interrupted) falls short too: it is to be resumed;
- the parent run records ``candidates_asked`` beside the trial counts and ``candidates_finished``
  of its summary, and, when short, the tag ``SHORTFALL_TAG`` with the reason and the fix;
- ``cmpnas search`` prints both and exits with ``EXIT_SEARCH_SHORT`` (README, docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.schema import SearchConfig
from orchestrator.tracking.journal import PARENT, TrackingJournal
from orchestrator.tracking.tags import SHORTFALL_TAG
from workers.trial_report import COMPATIBILITY_FAILURE_CAUSES

# Exit status of `cmpnas search` when the search ended with fewer candidates than asked.
EXIT_SEARCH_SHORT = 4


@dataclass(frozen=True)
class Shortfall:
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason}; {self.fix}"


def find_shortfall(search: SearchConfig, *, complete: bool, trials_started: int, trials_failed: int,
                   candidates_finished: int, compatibility_failed: int = 0) -> Shortfall | None:
    """Why a search with these counts ended short of ``search.num_candidates``; None when it did not."""
    asked = search.num_candidates
    if not complete:
        return Shortfall(f"the search was interrupted before all of its {asked} candidates ended",
                         "continue it with `cmpnas search --resume`")
    if trials_started < asked:
        limit = search.proposal_limit_mflops
        within = f" within {limit:g} MFLOPs" if limit is not None else ""
        return Shortfall(
            f"the {search.strategy} strategy found only {trials_started} new architecture(s){within} for the "
            f"{asked} candidates asked (search.num_candidates)",
            "raise search.max_mflops (or the budgets of search.budgets_mflops; `cmpnas space info` shows how many "
            f"architectures each budget admits) or lower search.num_candidates to {trials_started}",
        )
    if trials_failed:
        return Shortfall(
            f"{trials_failed} of {trials_started} trials failed after resources.max_failures retries and "
            f"{candidates_finished} candidate(s) finished",
            "see the tag 'error' of the FAILED child runs, fix the cause and search again "
            "(or raise resources.max_failures for transient failures)",
        )
    if candidates_finished == 0:
        return Shortfall("no candidate trained to its last epoch: the Pareto front is empty",
                         "use search.scheduler fifo, or a larger search.num_candidates with asha")
    if compatibility_failed == candidates_finished:
        return Shortfall(f"every one of the {candidates_finished} finished candidates failed the compatibility check "
                         "(the tag compatibility_failures says how): none is fit to query the gallery",
                         f"likely causes: {COMPATIBILITY_FAILURE_CAUSES}, or a gallery model trained too briefly "
                         "(raise gallery.epochs or gallery.min_steps)")
    return None


def record_shortfall(journal: TrackingJournal, search: SearchConfig, shortfall: Shortfall | None) -> None:
    """On the parent run: how many candidates were asked and, when short, why (keyed: written once)."""
    journal.log_metrics(PARENT, {"candidates_asked": search.num_candidates}, key="parent/candidates_asked")
    if shortfall is not None:
        journal.set_tags(PARENT, {SHORTFALL_TAG: str(shortfall)[:5000]}, key="parent/shortfall")
