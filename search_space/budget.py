"""A search space under a FLOPs budget: proposal operators that never leave it.

``within_budget(space, max_mflops)`` returns a ``BudgetedSpace``: the same genes, validation and
encoding as ``space``, but ``sample``, ``mutate`` and ``crossover`` only return architectures whose
FLOPs (``search_space.flops``, equal to fvcore's count) are at most ``max_mflops``. A proposer
written against ``SearchSpace`` therefore proposes within the budget when it is handed the budgeted
space, whatever its strategy. The rules, with the distribution each operator draws from:

- ``sample``: **uniform over the architectures within the budget**, every one equally likely, the
  distribution rejection sampling would reach with unlimited attempts, but without rejecting. The
  cost of an architecture is a chain (stem, each stage given the previous stage's width, head;
  see ``search_space.flops``), so the number of ways to complete a partial architecture within a
  remaining budget is counted exactly by dynamic programming over a grid of ``GRID_STEPS`` cost
  units (``FeasibleCounts``), and genes are drawn stage by stage in proportion to those counts.
  Stage costs are rounded *down* to grid units, so the counted set holds every architecture
  within the budget plus a thin rim just above it (at most stages + 1 units, under 0.2 % of the
  budget); a draw from the rim is rejected on its exact cost and drawn again, which leaves the
  draw exactly uniform over the feasible set.
- ``mutate``: the genes to change are chosen as ``SearchSpace.mutate`` chooses them, and each takes
  a value drawn uniformly among the other values that keep the child within the budget (given its
  other genes). A gene with no such value is replaced by another gene that has one, so a child
  still differs from its parent whenever any within-budget neighbour exists.
- ``crossover``: uniform crossover; a child over the budget is repaired towards its parents: in a
  random order, genes where it took the larger parent's value take the smaller one's, until it
  fits. Cost never decreases when a gene grows, so the gene-wise smaller parent fits and the
  child still takes every gene from a parent.
- ``repair``: any architecture over the budget (from a proposer that builds specs itself, from
  Optuna's NSGA-II) steps one random gene, not yet at its smallest value, one choice down, until
  it fits: the first within-budget architecture on a random monotone path towards the smallest.
- A budget below the space's smallest architecture is refused (``BudgetInfeasibleError``) with
  both figures; ``smallest()`` and ``largest()`` stay the space's own bounds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from functools import lru_cache
from itertools import product
from typing import Iterator

import numpy as np

from search_space.errors import CmpnasError
from search_space.flops import estimate_flops, head_flops, stage_flops, stem_flops, stem_output_size
from search_space.space import SearchSpace
from search_space.spec import ArchSpec, StageSpec

GRID_STEPS = 4096  # cost units per budget in the counting grid: a rim of <= (stages + 1) / 4096 of it
MAX_SAMPLE_DRAWS = 100_000  # the smallest architecture is always drawable, so this bound is never reached


class BudgetInfeasibleError(CmpnasError, ValueError):
    """A FLOPs budget below the cost of the smallest architecture of the space."""


def floor_mflops(space: SearchSpace) -> float:
    """MFLOPs of the space's smallest architecture: no budget below it admits anything."""
    return estimate_flops(space, space.smallest()) / 1e6


def ceiling_mflops(space: SearchSpace) -> float:
    """MFLOPs of the space's largest architecture: any budget above it constrains nothing."""
    return estimate_flops(space, space.largest()) / 1e6


def rounded_up(mflops: float, places: int = 4) -> float:
    """``mflops`` rounded up to ``places`` decimals: a budget quoted in an error must admit what it says."""
    return math.ceil(mflops * 10**places - 1e-9) / 10**places


def check_budget(space: SearchSpace, max_mflops: float, field: str = "search.max_mflops") -> None:
    """Refuse a budget that no architecture of ``space`` fits, naming ``field`` and both figures."""
    floor = floor_mflops(space)
    if max_mflops < floor:
        raise BudgetInfeasibleError(
            f"{field}={max_mflops:g} is below the smallest architecture of the search space '{space.name}' "
            f"({floor:.6g} MFLOPs: {space.smallest().short_name()}, {space.in_chans} input channel(s), "
            f"embedding {space.embed_dim}): raise {field} to at least {rounded_up(floor):.4f}. "
            "`cmpnas space info` prints the feasible range"
        )


@dataclass(frozen=True)
class BudgetedSpace(SearchSpace):
    """``space`` restricted to architectures of at most ``max_mflops``; see the module's rules."""

    max_mflops: float

    def mflops(self, spec: ArchSpec) -> float:
        return estimate_flops(self, spec) / 1e6

    def fits(self, spec: ArchSpec) -> bool:
        return self.mflops(spec) <= self.max_mflops

    def base(self) -> SearchSpace:
        """The unbudgeted space."""
        return SearchSpace(**_space_fields(self))

    # -- proposal operators ------------------------------------------------------------------
    def sample(self, rng: random.Random) -> ArchSpec:
        """Uniform over the architectures within the budget."""
        counts = feasible_counts(self.base(), self.max_mflops)
        for _ in range(MAX_SAMPLE_DRAWS):
            spec = counts.draw(rng)
            if self.fits(spec):
                return spec
        raise AssertionError(f"no architecture within {self.max_mflops} MFLOPs drawn in {MAX_SAMPLE_DRAWS} draws")

    def mutate(self, spec: ArchSpec, rng: random.Random, gene_probability: float = 0.1) -> ArchSpec:
        """Change the genes ``SearchSpace.mutate`` would, each to a value that keeps the child within budget."""
        parent = self.repair(self.validate(spec), rng)
        values = self.to_genes(parent)
        mutable = [i for i, (_, choices) in enumerate(self.genes()) if len(choices) > 1]
        if not mutable:
            return parent
        chosen = [i for i in mutable if rng.random() < gene_probability] or [rng.choice(mutable)]
        rng.shuffle(chosen)
        changed = False
        for index in chosen:
            changed |= self._redraw_gene(values, index, rng)
        if not changed:  # none of the chosen genes can move within the budget: move another one that can
            others = [i for i in mutable if i not in chosen]
            rng.shuffle(others)
            for index in others:
                if self._redraw_gene(values, index, rng):
                    break
        return self.from_genes(values)

    def crossover(self, first: ArchSpec, second: ArchSpec, rng: random.Random) -> ArchSpec:
        """Uniform crossover, repaired towards the gene-wise smaller parent when over budget."""
        a = self.to_genes(self.repair(self.validate(first), rng))
        b = self.to_genes(self.repair(self.validate(second), rng))
        child = [x if rng.random() < 0.5 else y for x, y in zip(a, b)]
        larger = [i for i, (x, y) in enumerate(zip(a, b)) if child[i] > min(x, y)]
        rng.shuffle(larger)
        for index in larger:
            if self.fits(self.from_genes(child)):
                break
            child[index] = min(a[index], b[index])
        return self.repair(self.from_genes(child), rng)

    def repair(self, spec: ArchSpec, rng: random.Random) -> ArchSpec:
        """``spec`` if it fits, else random one-choice-down steps until it does (see the module's rules)."""
        if self.fits(spec):
            return spec
        check_budget(self, self.max_mflops)
        genes = self.genes()
        values = self.to_genes(self.validate(spec))
        while not self.fits(self.from_genes(values)):
            lowerable = [i for i, (_, choices) in enumerate(genes) if values[i] > min(choices)]
            index = rng.choice(lowerable)
            values[index] = max(choice for choice in genes[index][1] if choice < values[index])
        return self.from_genes(values)

    def _redraw_gene(self, values: list[int], index: int, rng: random.Random) -> bool:
        """Set gene ``index`` to a uniform choice among the other values that fit; False if none does."""
        current = values[index]
        fitting = [choice for choice in self.genes()[index][1] if choice != current
                   and self.fits(self.from_genes([*values[:index], choice, *values[index + 1:]]))]
        if not fitting:
            return False
        values[index] = rng.choice(fitting)
        return True


def within_budget(space: SearchSpace, max_mflops: float, field: str = "search.max_mflops") -> BudgetedSpace:
    """``space`` under a budget of ``max_mflops``; a budget below its smallest architecture is refused
    (the error names ``field``)."""
    base = space.base() if isinstance(space, BudgetedSpace) else space
    check_budget(base, max_mflops, field)
    return BudgetedSpace(**_space_fields(base), max_mflops=float(max_mflops))


def _space_fields(space: SearchSpace) -> dict[str, object]:
    return {name.name: getattr(space, name.name) for name in fields(SearchSpace)}


# -- counting architectures by cost ----------------------------------------------------------------

@dataclass(frozen=True)
class _ResolutionTable:
    resolution: int
    budget_units: int  # grid units left for the stages after the stem; < 0: nothing fits
    units: tuple[np.ndarray, ...]  # per stage: (previous width choices, stage options) cost units
    completions: tuple[np.ndarray, ...]  # per stage s: (previous width choices, units + 1) ways to finish


class FeasibleCounts:
    """How many architectures of ``space`` fit in each remaining budget, stage by stage.

    ``completions[s][i, b]`` counts the ways to choose stages ``s..`` (and the head) within ``b``
    grid units when the previous stage's width is its ``i``-th choice; stage costs are rounded
    down to units, so the counted set contains every architecture within ``max_mflops`` (the
    module's rules say why and how the rim above it is removed).
    """

    def __init__(self, space: SearchSpace, max_mflops: float, steps: int = GRID_STEPS):
        self.space = space
        self.max_flops = max_mflops * 1e6
        self.unit = self.max_flops / steps
        self.steps = steps
        # Every (depth, kernel, expand, width) of a stage, in gene order.
        self.options = [[StageSpec(*values) for values in product(stage.depths, stage.kernels, stage.expands,
                                                                  stage.widths)] for stage in space.stages]
        self.width_index = [np.array([stage.widths.index(option.width) for option in options])
                            for stage, options in zip(space.stages, self.options)]
        self.tables = [self._table(resolution) for resolution in space.resolutions]

    @property
    def total(self) -> int:
        """Architectures counted: every one within the budget, plus the thin rim above it."""
        return sum(self._ways(table) for table in self.tables)

    def _ways(self, table: _ResolutionTable) -> int:
        return int(table.completions[0][0, table.budget_units]) if table.budget_units >= 0 else 0

    def _table(self, resolution: int) -> _ResolutionTable:
        space, steps = self.space, self.steps
        budget_units = int(np.floor((self.max_flops - stem_flops(space, resolution)) / self.unit))
        budget_units = min(budget_units, steps)
        units, size = [], stem_output_size(space, resolution)
        for index, (choices, options) in enumerate(zip(space.stages, self.options)):
            previous = (space.stem_width,) if index == 0 else space.stages[index - 1].widths
            last = index == len(space.stages) - 1
            costs, out_sizes = np.empty((len(previous), len(options))), set()
            for i, in_chs in enumerate(previous):
                for j, option in enumerate(options):
                    flops, out_size = stage_flops(choices, option, in_chs, size)
                    costs[i, j] = flops + (head_flops(space, option.width, out_size) if last else 0)
                    out_sizes.add(out_size)
            if len(out_sizes) != 1:  # the chain needs each stage's input size fixed by the resolution alone
                raise ValueError(f"stage {index} of the search space '{space.name}' has output sizes "
                                 f"{sorted(out_sizes)} at resolution {resolution}: its genes change its stride")
            units.append(np.floor(costs / self.unit).astype(np.int64))
            size = out_sizes.pop()
        # Backwards over the stages: the ways to finish from each remaining budget.
        after = np.ones((len(space.stages[-1].widths), steps + 1), dtype=np.int64)
        completions: list[np.ndarray] = []
        for index in reversed(range(len(space.stages))):
            stage_units, widths = units[index], self.width_index[index]
            ways = np.zeros((stage_units.shape[0], steps + 1), dtype=np.int64)
            for i in range(stage_units.shape[0]):
                for j, shift in enumerate(stage_units[i]):
                    if shift <= steps:
                        ways[i, shift:] += after[widths[j], : steps + 1 - shift]
            completions.insert(0, ways)
            after = ways
        return _ResolutionTable(resolution, budget_units, tuple(units), tuple(completions))

    def draw(self, rng: random.Random) -> ArchSpec:
        """One architecture of the counted set, each equally likely."""
        weights = [self._ways(table) for table in self.tables]
        table = self.tables[rng.choices(range(len(self.tables)), weights=weights)[0]]
        remaining, previous, stages = table.budget_units, 0, []
        for index, options in enumerate(self.options):
            shifts = table.units[index][previous]
            following = table.completions[index + 1] if index + 1 < len(self.options) else None
            ways = np.zeros(len(options))
            fits = shifts <= remaining
            if following is None:
                ways[fits] = 1.0
            else:
                ways[fits] = following[self.width_index[index][fits], remaining - shifts[fits]]
            choice = rng.choices(range(len(options)), weights=ways.tolist())[0]
            stages.append(options[choice])
            remaining -= int(shifts[choice])
            previous = int(self.width_index[index][choice])
        return self._spec(table.resolution, stages)

    def counted(self) -> Iterator[ArchSpec]:
        """Every architecture of the counted set, depth first (deterministic order)."""
        for table in self.tables:
            if table.budget_units >= 0:
                yield from self._walk(table, 0, 0, table.budget_units, [])

    def _walk(self, table: _ResolutionTable, index: int, previous: int, remaining: int, stages: list[StageSpec]
              ) -> Iterator[ArchSpec]:
        if index == len(self.options):
            yield self._spec(table.resolution, stages)
            return
        following = table.completions[index + 1] if index + 1 < len(self.options) else None
        for option, shift, width in zip(self.options[index], table.units[index][previous], self.width_index[index]):
            left = remaining - int(shift)
            if left < 0 or (following is not None and following[width, left] == 0):
                continue
            yield from self._walk(table, index + 1, int(width), left, [*stages, option])

    def _spec(self, resolution: int, stages: list[StageSpec]) -> ArchSpec:
        return ArchSpec(space=self.space.name, in_chans=self.space.in_chans, resolution=resolution,
                        stages=tuple(stages), embed_dim=self.space.embed_dim)


@lru_cache(maxsize=64)
def feasible_counts(space: SearchSpace, max_mflops: float) -> FeasibleCounts:
    """The counting tables of ``space`` under ``max_mflops``, built once per process (tens of ms)."""
    return FeasibleCounts(space, max_mflops)


def count_within(space: SearchSpace, max_mflops: float, at_most: int, counts: FeasibleCounts | None = None) -> int:
    """Architectures of ``space`` within ``max_mflops``, counted exactly up to ``at_most`` (the
    counting tables are built here unless ``counts`` brings them)."""
    if max_mflops < floor_mflops(space):
        return 0
    budgeted = within_budget(space, max_mflops)
    counts = counts or feasible_counts(budgeted.base(), budgeted.max_mflops)
    found = 0
    for spec in counts.counted():
        found += budgeted.fits(spec)
        if found >= at_most:
            break
    return found


def budget_admitting(space: SearchSpace, count: int) -> float:
    """The smallest budget (MFLOPs) that admits ``count`` architectures of ``space``: the cost of its
    ``count``-th cheapest architecture (bisection on the exact count)."""
    low, high = floor_mflops(space), ceiling_mflops(space)
    if count_within(space, high, count) < count:
        raise BudgetInfeasibleError(f"the search space '{space.name}' holds fewer than {count} architectures")
    if count_within(space, low, count) >= count:
        return low
    # Costs are whole FLOPs: bisect on integers; each step builds its own (uncached) tables.
    low_flops, high_flops = round(low * 1e6), round(high * 1e6)
    while high_flops - low_flops > 1:
        middle = (low_flops + high_flops) // 2
        if count_within(space, middle / 1e6, count, FeasibleCounts(space, middle / 1e6)) >= count:
            high_flops = middle
        else:
            low_flops = middle
    return high_flops / 1e6
