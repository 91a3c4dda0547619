"""One search's cost on the GPU machine, read back from MLflow; and the size of the next search.

    python bench/gpu/search_report.py --tracking-uri URI --experiment NAME [--out FILE.json]
    python bench/gpu/search_report.py --tracking-uri URI --experiment NAME --fit-seconds S \\
        --train-images N --candidates 16 --concurrent 4

The first form prints (and writes) the latest search's figures: wall time of its parent run, the
trials stage (first candidate start to last candidate end), trials per hour over both, the most
candidates running at once, per trial its seconds, best images/s, peak GPU memory and device, and
the paragon's figures. The second form sizes a larger search from this one's trials: per trial a
fixed overhead (trial seconds less the seconds of its epochs) plus, per epoch, the median epoch's
seconds scaled from ``--measured-train-images`` to ``--train-images``, in waves of
``--concurrent``; it prints the most
candidate epochs (1 to 6) that fit ``--fit-seconds``, or 0 when even one does not.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

from mlflow.tracking import MlflowClient

ROLE_TAG = "cmpnas.role"  # orchestrator/tracking/tags.py


def latest_search(client: MlflowClient, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise SystemExit(f"no experiment {experiment_name!r}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parents = [run for run in runs if run.data.tags.get(ROLE_TAG) == "search"]
    if not parents:
        raise SystemExit(f"no search run in {experiment_name!r}")
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and run.data.tags.get(ROLE_TAG) == "candidate"]
    return parent, children


def most_at_once(children) -> int:
    events = sorted([(run.info.start_time, 1) for run in children if run.info.end_time] +
                    [(run.info.end_time, -1) for run in children if run.info.end_time])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def trial_figures(client: MlflowClient, run) -> dict:
    """One trial; its epochs are those it trained (training.min_steps can raise training.epochs)."""
    rates = [m.value for m in client.get_metric_history(run.info.run_id, "images_per_second")]
    epoch_seconds = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    metrics, params = run.data.metrics, run.data.params
    return {"arch_id": params.get("arch_id"), "device": params.get("device"),
            "trial_seconds": metrics.get("final_trial_seconds"), "images_per_second": max(rates, default=None),
            "epochs": len(epoch_seconds), "train_seconds": sum(epoch_seconds),
            "gpu_max_memory_mb": metrics.get("final_gpu_max_memory_mb"),
            "mflops": metrics.get("final_mflops"), "cross_r1": metrics.get("final_cross_r1")}


def report(client: MlflowClient, experiment: str) -> dict:
    parent, children = latest_search(client, experiment)
    ended = [run for run in children if run.info.end_time]
    wall = ((parent.info.end_time or max((r.info.end_time for r in ended), default=parent.info.start_time))
            - parent.info.start_time) / 1000
    trials_wall = ((max(r.info.end_time for r in ended) - min(r.info.start_time for r in ended)) / 1000
                   if ended else 0.0)
    trials = [trial_figures(client, run) for run in children]
    memory = [t["gpu_max_memory_mb"] for t in trials if t["gpu_max_memory_mb"] is not None]
    seconds = [t["trial_seconds"] for t in trials if t["trial_seconds"] is not None]
    return {"experiment": experiment, "search_run_id": parent.info.run_id, "status": parent.info.status,
            "wall_seconds": round(wall, 1), "candidates_finished": len(ended),
            "trials_stage_seconds": round(trials_wall, 1),
            "trials_per_hour_trials_stage": round(3600 * len(ended) / trials_wall, 1) if trials_wall else None,
            "trials_per_hour_whole_search": round(3600 * len(ended) / wall, 1) if wall else None,
            "most_trials_at_once": most_at_once(children),
            "median_trial_seconds": round(statistics.median(seconds), 1) if seconds else None,
            "peak_trial_gpu_memory_mb": max(memory, default=None),
            "paragon": {k: v for k, v in parent.data.metrics.items() if k.startswith("paragon")},
            "trials": trials}


def candidate_epochs(figures: dict, args: argparse.Namespace) -> int:
    """The most epochs per candidate (1-6) whose predicted trials stage fits ``args.fit_seconds``."""
    usable = [t for t in figures["trials"] if t["trial_seconds"] and t["epochs"]]
    if not usable:
        return 1
    overhead = statistics.median(max(0.0, t["trial_seconds"] - t["train_seconds"]) for t in usable)
    epoch = statistics.median(t["train_seconds"] / t["epochs"] for t in usable) * (
        args.train_images / args.measured_train_images)
    waves = math.ceil(args.candidates / args.concurrent)
    for epochs in range(6, 0, -1):
        if waves * (overhead + epochs * epoch) <= args.fit_seconds:
            return epochs
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("--fit-seconds", type=float, default=None)
    parser.add_argument("--measured-train-images", type=int, default=10000,
                        help="training images of the measured search's candidates (train_size - validation_size)")
    parser.add_argument("--train-images", type=int, default=50000)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args()
    figures = report(MlflowClient(tracking_uri=args.tracking_uri), args.experiment)
    if args.fit_seconds is not None:
        print(candidate_epochs(figures, args))
        return
    text = json.dumps(figures, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text if not args.out else f"{args.experiment}: {figures['candidates_finished']} candidates in "
          f"{figures['wall_seconds']} s, {figures['trials_per_hour_trials_stage']} trials/h (trials stage)",
          file=sys.stdout)


if __name__ == "__main__":
    main()
