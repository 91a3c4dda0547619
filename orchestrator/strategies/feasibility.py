"""What a search's strategy and FLOPs budgets admit, checked before anything is recorded.

The strategy's settings need no space and are checked first, before any work
(``check_strategy_settings``): ``search.predictor.enabled`` only with a strategy whose proposals
it can screen (``Strategy.supports_predictor``), and what the strategy itself checks
(``Strategy.check_settings``, e.g. an Optuna sampler that cannot be built). Both are refused with
``ConfigError`` naming the field.

The budgets are checked once the space is known (``check_search_budgets``), each refused with
``BudgetInfeasibleError`` naming the field, the figures and the change that makes the search
possible:

- ``search.max_mflops`` and every budget of ``search.budgets_mflops`` must reach the space's
  smallest architecture (its MFLOPs are in the error; ``cmpnas space info`` prints the range);
- the proposal limit (``search.max_mflops``, else the largest budget) must admit at least
  ``search.num_candidates`` distinct architectures: a search cannot run more candidates than its
  budget holds. The error gives the budget that admits that many and the number this one admits;
- in a budget sweep of a strategy that targets each budget in turn (a ``ProposerStrategy``), the
  trials aimed at the budgets up to each one must fit in it: trials never repeat an architecture,
  so budget ``b_i`` must admit at least the number of trials aimed at ``b_1..b_i``.

Architectures are counted exactly (``search_space.budget``), with the FLOPs estimate that equals
fvcore's count.
"""

from __future__ import annotations

from orchestrator.config import ConfigError
from orchestrator.config.registries import STRATEGIES
from orchestrator.config.schema import SearchConfig
from orchestrator.strategies.proposer_strategy import ProposerStrategy
from search_space import BudgetInfeasibleError, SearchSpace
from search_space.budget import budget_admitting, check_budget, count_within, rounded_up


def check_strategy_settings(search: SearchConfig) -> None:
    """Refuse strategy settings that cannot work (see the module's rules); silent when they can."""
    strategy = STRATEGIES[search.strategy]
    if search.predictor.enabled and not strategy.supports_predictor:
        screened = sorted(name for name, other in STRATEGIES.items() if other.supports_predictor)
        raise ConfigError(f"search.predictor.enabled works with the strategies {screened}, whose proposals it "
                          f"screens; search.strategy {search.strategy!r} proposes without it: disable the predictor "
                          "or pick one of those")
    strategy.check_settings(search)


def check_search_budgets(space: SearchSpace, search: SearchConfig) -> None:
    """Refuse budgets that ``space`` cannot satisfy (see the module's rules); silent when they can."""
    if search.max_mflops is not None:
        check_budget(space, search.max_mflops, "search.max_mflops")
    for budget in search.budgets_mflops or ():
        check_budget(space, budget, "search.budgets_mflops")
    limit = search.proposal_limit_mflops
    if limit is None:
        return
    field = "search.max_mflops" if search.max_mflops is not None else "search.budgets_mflops"
    _check_count(space, limit, search.num_candidates, field, f"search.num_candidates={search.num_candidates}",
                 "lower search.num_candidates to {admitted}")
    if search.budgets_mflops and issubclass(STRATEGIES[search.strategy], ProposerStrategy):
        budgets = sorted(search.budgets_mflops)
        for index, budget in enumerate(budgets):
            # Trials go to the budgets in turn: trial t aims at budgets[t % len(budgets)].
            aimed = sum(1 for trial in range(search.num_candidates) if trial % len(budgets) <= index)
            _check_count(space, budget, aimed, "search.budgets_mflops",
                         f"the {aimed} trials aimed at budgets up to it (search.num_candidates="
                         f"{search.num_candidates} in turn over {len(budgets)} budgets)",
                         "lower search.num_candidates")


def _check_count(space: SearchSpace, max_mflops: float, needed: int, field: str, asked_by: str, other_fix: str
                 ) -> None:
    admitted = count_within(space, max_mflops, needed)
    if admitted >= needed:
        return
    enough = rounded_up(budget_admitting(space, needed))
    raise BudgetInfeasibleError(
        f"{field}: a budget of {max_mflops:g} MFLOPs admits only {admitted} architecture(s) of the search space "
        f"'{space.name}', fewer than {asked_by}: raise it to at least {enough:.4f} MFLOPs (which admits {needed}) or "
        + other_fix.format(admitted=admitted) + ". `cmpnas space info` counts what each budget admits"
    )
