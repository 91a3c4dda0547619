"""Proposals under a FLOPs budget, per strategy: speed, acceptance, diversity, where they fall.

For every registered space, every strategy and budgets of 1.1x the smallest architecture and 25 %,
50 % and 100 % of the way from the smallest to the largest, asks the strategy's searcher (built by
``create_searcher`` exactly as a search builds it) for ``--candidates`` candidates, each "trained"
at once with a synthetic score (more FLOPs score higher, plus noise), so evolution and NSGA-II
breed as they would. Reported per row:

- proposals/s: proposals drawn per second of searcher time (duplicates and refusals included);
- accepted: candidates / proposals (a proposal is refused as a duplicate or over the budget);
- distinct: distinct architectures among the candidates (must equal the candidates);
- histogram: where the proposals fall between the space's smallest architecture and the budget,
  as (MFLOPs - smallest) / (budget - smallest) in quarters, and above the budget (refused);
- the row "uniform + rejection (before)" is what every strategy started from before issue 18:
  uniform samples of the whole space filtered by the budget; its accepted share is exact (counted
  architectures within the budget / all architectures), its proposals/s measured on 2,000 samples.

The searcher's gate is the analytic FLOPs estimate (``search_space.flops``), which equals fvcore's
count; a search gates with fvcore itself (about 0.1-2 s per new architecture on a small CPU, once
per architecture), which would swamp the proposal cost measured here. The estimate's agreement
with fvcore is measured at the end on ``--fvcore-samples`` random architectures per space.

    .venv/bin/python bench/proposal_budget.py [--candidates 64] [--seed 0] [--fvcore-samples 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import subprocess
import time

import numpy as np

from evaluators import count_complexity
from orchestrator.config.schema import SearchConfig
from orchestrator.strategies import STRATEGIES, SearchRequest, create_searcher
from search_space import ArchSpec, build_query_model, create_space, estimate_flops, estimate_mflops, list_spaces
from search_space.budget import ceiling_mflops, feasible_counts, floor_mflops

BINS = (0.25, 0.5, 0.75, 1.0)
BIN_LABELS = ("1st quarter", "2nd", "3rd", "4th", "over")


def budgets(space) -> dict[str, float]:
    floor, ceiling = floor_mflops(space), ceiling_mflops(space)
    return {"1.1x min": 1.1 * floor, "25% range": floor + 0.25 * (ceiling - floor),
            "50% range": floor + 0.5 * (ceiling - floor), "100% range": ceiling}


def histogram(mflops: list[float], floor: float, budget: float) -> str:
    """Percent of proposals per quarter of [floor, budget], then over the budget."""
    positions = (np.asarray(mflops) - floor) / (budget - floor)
    counts = np.histogram(positions, bins=(-np.inf, *BINS[:-1], 1.0 + 1e-12, np.inf))[0]
    return " / ".join(f"{100 * count / max(1, len(positions)):.0f}" for count in counts)


def percent(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.01 or share == 0 else f"{100 * share:.1e} %"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_strategy(space, strategy: str, budget: float, candidates: int, seed: int) -> dict:
    proposals: list[float] = []  # MFLOPs of every proposal the searcher measured

    def measured(spec: ArchSpec) -> float:  # the searcher's cost: the estimate, which equals fvcore's count
        proposals.append(estimate_mflops(space, spec))
        return proposals[-1]

    config = SearchConfig(strategy=strategy, max_mflops=budget, num_candidates=candidates, seed=seed)
    rng = random.Random(seed)
    started = time.perf_counter()
    searcher = create_searcher(SearchRequest(space, config, "cross_map", measured,
                                             constraint=lambda spec: measured(spec) <= budget))
    specs = []
    for index in range(candidates):
        suggestion = searcher.suggest(f"t{index}")
        if not isinstance(suggestion, dict):
            break
        specs.append(ArchSpec.from_json(suggestion["arch"]))
        mflops = estimate_mflops(space, specs[-1])
        searcher.on_trial_complete(f"t{index}", {"cross_map": 40 + 10 * np.log(mflops) + rng.gauss(0, 1),
                                                 "mflops": mflops})
    seconds = time.perf_counter() - started
    return {"proposals_per_s": searcher.attempts / seconds, "accepted": len(specs) / max(1, searcher.attempts),
            "candidates": len(specs), "distinct": len({spec.arch_id for spec in specs}),
            "histogram": histogram(proposals, floor_mflops(space), budget)}


def run_rejection(space, budget: float, samples: int, seed: int) -> dict:
    rng = random.Random(seed)
    started = time.perf_counter()
    mflops = [estimate_mflops(space, space.sample(rng)) for _ in range(samples)]
    seconds = time.perf_counter() - started
    exact = feasible_counts(space, budget).total / feasible_counts(space, ceiling_mflops(space)).total
    return {"proposals_per_s": samples / seconds, "accepted": exact,
            "histogram": histogram(mflops, floor_mflops(space), budget)}


def fvcore_agreement(space, samples: int, seed: int) -> tuple[int, float, float]:
    rng = random.Random(seed)
    specs = [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(samples))]
    worst, seconds = 0.0, 0.0
    for spec in specs:
        started = time.perf_counter()
        measured = count_complexity(build_query_model(spec), (space.in_chans, spec.resolution, spec.resolution)).flops
        seconds += time.perf_counter() - started
        worst = max(worst, abs(estimate_flops(space, spec) - measured) / measured)
    return len(specs), worst, seconds / len(specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fvcore-samples", type=int, default=40)
    args = parser.parse_args()
    logging.getLogger("optuna").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.strftime("%Y-%m-%d %H:%M")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"### Proposals under a FLOPs budget (`bench/proposal_budget.py`), {started}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs ({cpu_model()})")
    print(f"\n`uptime` at start: {load}; {args.candidates} candidates per row, seed {args.seed}, "
          "embedding 128, 1 input channel.\n")
    for name in list_spaces():
        space = create_space(name, embed_dim=128, in_chans=1)
        print(f"#### {name}: {floor_mflops(space):.4f} to {ceiling_mflops(space):.4f} MFLOPs\n")
        print("| budget | MFLOPs | strategy | proposals/s | accepted | candidates (distinct) | "
              "% of proposals per quarter from smallest to budget: " + " / ".join(BIN_LABELS) + " |")
        print("|---|---|---|---|---|---|---|")
        for label, budget in budgets(space).items():
            before = run_rejection(space, budget, 2000, args.seed)
            print(f"| {label} | {budget:.4f} | uniform + rejection (before) | {before['proposals_per_s']:,.0f} | "
                  f"{percent(before['accepted'])} | - | {before['histogram']} |")
            for strategy in sorted(STRATEGIES):
                row = run_strategy(space, strategy, budget, args.candidates, args.seed)
                print(f"| {label} | {budget:.4f} | {strategy} | {row['proposals_per_s']:,.0f} | "
                      f"{percent(row['accepted'])} | {row['candidates']} ({row['distinct']}) | {row['histogram']} |")
        print()
    print("#### The estimate against fvcore\n")
    print("| space | architectures (smallest, largest, random) | largest relative difference | fvcore s/architecture |")
    print("|---|---|---|---|")
    for name in list_spaces():
        count, worst, per = fvcore_agreement(create_space(name, embed_dim=128, in_chans=1), args.fvcore_samples,
                                             args.seed)
        print(f"| {name} | {count} | {worst:.1e} | {per:.2f} |")
    print(f"\n`uptime` at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
