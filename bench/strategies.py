"""Strategies side by side: the same data, gallery, seed and trial count for each strategy.

For each strategy in turn, runs a real search (local Ray, sqlite MLflow) and reads the parent
run back: final hypervolume (reference: mAP 0, paragon MFLOPs) and its fraction, the trial at
which the hypervolume first reached 95% of its final value, Pareto size, trials stopped early,
the predictor's Spearman correlation when enabled, and wall time. One gallery model is trained
once and shared. Prints a Markdown block for docs/benchmarks.md. Strategies run one after the
other, so compare them only within one invocation (same machine, same load).

    .venv/bin/python bench/strategies.py [--candidates 8] [--epochs 2] [--repeats 1] [--set a.b=c ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from orchestrator.config import load_config
from orchestrator.search.driver import run_search
from orchestrator.setup.data import load_data
from orchestrator.setup.gallery import train_and_save_gallery
from orchestrator.tracking.client import SearchTracker
from workers.training.preprocess import pick_device

VARIANTS = {
    "random": ["search.strategy=random"],
    "random+predictor": ["search.strategy=random", "search.predictor.enabled=true",
                         "search.predictor.min_observations=3"],
    "evolution": ["search.strategy=evolution"],
    "nsga2": ["search.strategy=nsga2"],
    "nsga2+asha": ["search.strategy=nsga2", "search.scheduler=asha"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="seeds per strategy (0, 1, ...)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cmpnas-strategies-"))).resolve()
    common = [f"search.num_candidates={args.candidates}", f"training.epochs={args.epochs}",
              f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "tracking.experiment=bench-strategies",
              f"gallery.checkpoint={workdir / 'gallery.safetensors'}", *args.overrides]
    base = load_config(overrides=[*common, f"output_dir={workdir / 'gallery'}"])
    if not (workdir / "gallery.safetensors").exists():
        train_and_save_gallery(base, load_data(base), pick_device(), Console(quiet=True).log)

    rows = []
    for name in args.variants:
        measured = []
        for seed in range(args.repeats):
            config = load_config(overrides=[*common, *VARIANTS[name], f"search.seed={seed}",
                                            f"output_dir={workdir / name / str(seed)}",
                                            f"tracking.run_name={name}-seed{seed}"])
            started = time.perf_counter()
            outcome = run_search(config, Console(quiet=True))
            seconds = time.perf_counter() - started
            tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
            metrics = tracker.client.get_run(outcome.parent_run_id).data.metrics
            history = sorted(tracker.client.get_metric_history(outcome.parent_run_id, "hypervolume"),
                             key=lambda point: point.step)
            final = history[-1].value if history else 0.0
            reached = next((point.step for point in history if point.value >= 0.95 * final), None)
            measured.append({"hv_fraction": metrics.get("hypervolume_fraction", 0.0), "hv": final,
                             "reached": reached, "front": metrics.get("pareto_size", 0),
                             "stopped": metrics.get("trials_stopped_early", 0),
                             "spearman": metrics.get("predictor_spearman"), "seconds": seconds})
        rows.append((name, measured))

    print(f"### Strategies, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} CPUs")
    print(f"\n{args.candidates} candidates, {args.epochs} epochs, seeds 0..{args.repeats - 1}; "
          "hypervolume reference (mAP 0, paragon MFLOPs); medians over seeds.\n")
    print("| strategy | hypervolume fraction | trial reaching 95% of final | front size | stopped early | "
          "predictor Spearman | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, measured in rows:
        def median(key):
            values = [m[key] for m in measured if m[key] is not None]
            return statistics.median(values) if values else None

        spearman = median("spearman")
        print(f"| {name} | {median('hv_fraction'):.4f} | {median('reached')} | {median('front'):.0f} | "
              f"{median('stopped'):.0f} | {'' if spearman is None else f'{spearman:.2f}'} | {median('seconds'):.0f} |")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
