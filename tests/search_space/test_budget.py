"""Proposal operators under a FLOPs budget: exact counts, the uniform sampler, mutation, crossover, repair."""

import random
import re
from collections import Counter
from itertools import product

import pytest
from scipy.stats import chisquare

from search_space import BudgetInfeasibleError, SearchSpace, StageChoices, create_space, estimate_mflops, list_spaces
from search_space.budget import budget_admitting, ceiling_mflops, count_within, floor_mflops, within_budget


@pytest.fixture(params=list_spaces())
def space(request):
    return create_space(request.param, embed_dim=64, in_chans=1)


def tiny_space(stem_stride: int = 1) -> SearchSpace:
    """Small enough to enumerate: 2 resolutions x (2*2*2*2)^2 = 512 architectures."""
    def stage(widths, stride, use_se):
        return StageChoices(depths=(1, 2), kernels=(3, 5), expands=(3, 4), widths=widths, stride=stride,
                            use_se=use_se, activation="relu")

    return SearchSpace(name="mnv3_28", in_chans=1, embed_dim=16, stem_width=8, stem_stride=stem_stride, head_width=32,
                       resolutions=(12, 16), stages=(stage((8, 16), 2, False), stage((16, 24), 2, True)))


def _all(space):
    return [space.from_genes(list(values)) for values in product(*(choices for _, choices in space.genes()))]


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_counts_are_exact_against_brute_force(stem_stride):
    space = tiny_space(stem_stride)
    costs = sorted(estimate_mflops(space, spec) for spec in _all(space))
    for budget in (costs[0], costs[3], costs[40], costs[255], costs[-1], (costs[10] + costs[11]) / 2):
        expected = sum(cost <= budget for cost in costs)
        assert count_within(space, budget, at_most=10**6) == expected, budget
    for count in (1, 2, 7, 100):
        assert budget_admitting(space, count) == pytest.approx(costs[count - 1])


def test_samples_are_uniform_over_the_architectures_within_a_tight_budget():
    space = create_space("mnv3_28", embed_dim=64, in_chans=1)
    budget = 1.05 * floor_mflops(space)
    budgeted = within_budget(space, budget)
    feasible = {spec.arch_id for spec in _feasible(space, budget)}
    rng = random.Random(0)
    draws = Counter(budgeted.sample(rng).arch_id for _ in range(60 * len(feasible)))
    assert set(draws) == feasible, "every architecture within the budget is drawn, nothing else"
    assert chisquare(list(draws.values())).pvalue > 1e-3


def _feasible(space, budget):
    from search_space.budget import feasible_counts

    return [spec for spec in feasible_counts(space, budget).counted() if estimate_mflops(space, spec) <= budget]


@pytest.mark.parametrize("position", [0.0, 0.05, 0.25, 1.0])
def test_every_operator_stays_within_the_budget(space, position):
    floor, ceiling = floor_mflops(space), ceiling_mflops(space)
    budget = floor * 1.05 if position == 0.05 else floor + position * (ceiling - floor)
    budgeted = within_budget(space, budget)
    rng = random.Random(3)
    parents = [budgeted.sample(rng) for _ in range(30)]
    children = [budgeted.mutate(parent, rng, gene_probability=0.2) for parent in parents]
    crosses = [budgeted.crossover(a, b, rng) for a, b in zip(parents, reversed(parents))]
    repaired = [budgeted.repair(space.sample(rng), rng) for _ in range(30)] + [budgeted.repair(space.largest(), rng)]
    for spec in parents + children + crosses + repaired:
        assert space.contains(spec) and estimate_mflops(space, spec) <= budget
    if position > 0:  # the smallest architecture alone fits at position 0: nothing to mutate to
        assert sum(child != parent for child, parent in zip(children, parents)) >= 25
    for (a, b), child in zip(zip(parents, reversed(parents)), crosses):
        assert all(gene in pair for gene, pair in zip(space.to_genes(child), zip(space.to_genes(a),
                                                                               space.to_genes(b))))


def test_repair_keeps_a_fitting_spec_and_stops_at_the_first_fit():
    space = create_space("mnv3_28", embed_dim=64, in_chans=1)
    budget = 3.0
    budgeted = within_budget(space, budget)
    rng = random.Random(5)
    fitting = budgeted.sample(rng)
    assert budgeted.repair(fitting, rng) is fitting
    for _ in range(20):
        repaired = budgeted.repair(space.largest(), rng)
        genes, choices = space.to_genes(repaired), [sorted(c) for _, c in space.genes()]
        # One more step up on any gene that was lowered would break the budget again: the first fit.
        raised = [space.from_genes([*genes[:i], c[c.index(v) + 1], *genes[i + 1:]])
                  for i, (v, c) in enumerate(zip(genes, choices)) if v != max(c)]
        assert estimate_mflops(space, repaired) <= budget
        assert any(estimate_mflops(space, spec) > budget for spec in raised)


def test_mutation_changes_only_the_genes_it_redraws():
    space = create_space("mnv3_64", embed_dim=64, in_chans=3)
    budgeted = within_budget(space, 2 * floor_mflops(space))
    rng = random.Random(7)
    for _ in range(50):
        parent = budgeted.sample(rng)
        child = budgeted.mutate(parent, rng, gene_probability=0.05)
        changed = sum(a != b for a, b in zip(space.to_genes(parent), space.to_genes(child)))
        assert 1 <= changed <= 6


def test_a_budget_below_the_smallest_architecture_is_refused_with_both_figures(space):
    floor = floor_mflops(space)
    with pytest.raises(BudgetInfeasibleError, match=rf"max_mflops=0.5 is below .*\({floor:.6g} MFLOPs") as refused:
        within_budget(space, 0.5)
    within_budget(space, float(re.search(r"at least (\d+\.\d+)", str(refused.value)).group(1)))  # what it quotes fits
    assert within_budget(space, floor).sample(random.Random(0)) == space.smallest()
