"""What one search costs: orchestration efficiency, trials per hour, gallery forward passes with the
shared embedding cache against recomputing them per trial, and time per stage.

Reads a finished search back from MLflow (the parent run's stage timings, the child runs' trial
times), then measures, on this machine, what embedding the gallery-side images in every trial
would cost: one trial's worth of gallery forward passes (its training targets and the gallery
split) is timed with the search's own gallery checkpoint, and multiplied by the trial count.

- orchestration efficiency = sum of trial busy time / (trials-stage wall time x concurrent slots);
  trial busy time is each trial's own measured time (``trial_seconds``: model build, training,
  per-epoch evaluation, FLOPs and latency), and, as a second reading, its MLflow child run's start
  to end (which adds Ray's actor start and result transfer);
- trials per hour over the trials stage and over the whole search.

    python bench/search_cost.py --workdir /tmp/paper-fashion --config configs/quickstart.yaml [--run-id ID]

``--workdir`` holds the search's ``mlflow.db`` (as written by bench/paper_table.py or ``cmpnas
search`` run in that folder); ``--config`` and ``--set`` must describe the same search.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = (("data", "stage_data_seconds"), ("gallery model (train or load)", "stage_gallery_model_seconds"),
          ("gallery embeddings (once)", "stage_gallery_embedding_seconds"), ("Ray start", "stage_ray_start_seconds"),
          ("trials", "stage_trials_seconds"), ("Pareto selection and report", "stage_pareto_seconds"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--run-id", default=None, help="default: the latest search of the config's experiment")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2, help="threads for the recompute measurement")
    parser.add_argument("--sample", type=int, default=None,
                        help="time the recompute on this many images and scale (default: one trial's worth)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    workdir = args.workdir.resolve()
    domain = "fashion" if "quickstart" in args.config.name else args.config.stem

    import numpy as np
    import torch

    from orchestrator.config import load_config
    from orchestrator.setup.data import load_data
    from orchestrator.tracking.client import SearchTracker
    from workers.gallery.model import load_gallery
    from workers.training.preprocess import ModelInput, embed_images

    config = load_config(args.config, [f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                                       f"output_dir={workdir / domain}", *args.overrides])
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    if args.run_id:
        parent = tracker.client.get_run(args.run_id)
    else:
        parent = tracker.client.search_runs([tracker.experiment_id], "tags.`cmpnas.role` = 'search'",
                                            order_by=["attributes.start_time DESC"], max_results=1)[0]
    run_id = parent.info.run_id
    metrics, params = parent.data.metrics, parent.data.params
    children = [run for run in tracker.child_runs(run_id) if run.info.status == "FINISHED"]
    slots = int(params["search.max_concurrent"])
    trials_wall = metrics["stage_trials_seconds"]
    busy = [run.data.metrics["final_trial_seconds"] for run in children]
    occupancy = [(run.info.end_time - run.info.start_time) / 1000 for run in children]
    search_wall = metrics.get("search_wall_seconds")

    # Gallery forward passes: once per search (recorded), against once per trial (measured here).
    data = load_data(config)
    checkpoint = load_gallery(config.gallery_checkpoint_path)
    torch.set_num_threads(args.threads)
    model = checkpoint.model.eval()
    per_trial_images = len(data.train) + len(data.gallery)  # each trial's targets and its evaluation gallery
    timed = min(per_trial_images, args.sample or per_trial_images)
    images = np.concatenate([data.train.images, data.gallery.images])[:timed]
    started = time.perf_counter()
    embed_images(model, images, ModelInput(checkpoint.mean, checkpoint.std, model.arch.image_size))
    per_trial_seconds = (time.perf_counter() - started) * per_trial_images / timed
    cached_images = int(metrics["gallery_images_embedded"])
    cached_seconds = metrics["stage_gallery_embedding_seconds"]
    once = len(data.train) + len(data.query) + len(data.gallery)
    trials = len(children)
    recompute_images = trials * per_trial_images + len(data.query)

    lines = [
        f"### Search cost: {params.get('dataset', '?')} search {run_id}, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "",
        f"- config: `{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}` "
        f"{' '.join('--set ' + o for o in args.overrides)}; {trials} finished trials, {slots} concurrent slots, "
        f"{params.get('resources.cpus_per_trial')} CPU per trial; load average when measuring the recompute: "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        f"- orchestration efficiency = sum of trial busy time / (trials-stage wall x slots) = "
        f"{sum(busy):.0f} s / ({trials_wall:.0f} s x {slots}) = **{sum(busy) / (trials_wall * slots):.3f}** "
        f"(trial's own time); with MLflow child-run start-to-end as busy time: "
        f"{sum(occupancy) / (trials_wall * slots):.3f}",
        f"- trial time: median {statistics.median(busy):.0f} s, range {min(busy):.0f}-{max(busy):.0f} s",
        f"- trials per hour: {3600 * trials / trials_wall:.1f} over the trials stage"
        + (f", {3600 * trials / search_wall:.1f} over the whole search ({search_wall / 60:.1f} min)"
           if search_wall else ""),
        f"- gallery forward passes, shared embedding cache: {cached_images:,} images once per search "
        f"(train {len(data.train):,} + query {len(data.query):,} + gallery {len(data.gallery):,} = {once:,}; "
        f"{'equal' if cached_images == once else 'NOT equal'} to one pass over the splits), {cached_seconds:.0f} s "
        "in the search",
        f"- recomputed per trial instead: {trials} x ({len(data.train):,} train targets + {len(data.gallery):,} "
        f"gallery) + {len(data.query):,} query = {recompute_images:,} images; one trial's worth, timed now on "
        f"{timed:,} images{' and scaled' if timed < per_trial_images else ''}: {per_trial_seconds:.1f} s, so {trials * per_trial_seconds:.0f} s of gallery-model time in total "
        f"({recompute_images / cached_images:.1f}x the passes of the cache), {trials * per_trial_seconds / slots:.0f} s "
        f"of wall time at {slots} slots",
        "",
        "| stage | seconds | share of the search |",
        "|---|---|---|",
    ]
    for label, key in STAGES:
        if key in metrics:
            share = f"{100 * metrics[key] / search_wall:.1f}%" if search_wall else ""
            lines.append(f"| {label} | {metrics[key]:.1f} | {share} |")
    if search_wall:
        accounted = sum(metrics.get(key, 0.0) for _, key in STAGES)
        lines.append(f"| other (paragon evaluation, MLflow parent run setup) | {search_wall - accounted:.1f} | "
                     f"{100 * (search_wall - accounted) / search_wall:.1f}% |")
        lines.append(f"| **whole search** | {search_wall:.1f} | 100% |")
    if "stage_tracking_seconds" in metrics:
        lines.append(f"| tracking: MLflow calls, inside the stages above | {metrics['stage_tracking_seconds']:.1f} | "
                     + (f"{100 * metrics['stage_tracking_seconds'] / search_wall:.1f}% |" if search_wall else " |"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
