"""Trial compute of a search with candidates trained from scratch vs inheriting supernet weights.

One run: trains the compatible supernet once (`cmpnas supernet train`'s job), then runs the same
search budget in each mode (`training.mode` = scratch, inherit, inherit_zero_shot). The strategy is
random search with one seed, so every mode evaluates the same candidates in the same order.

Compute is CPU-seconds of the trials: each trial reports ``trial_cpu_seconds``, the CPU time of its
own worker process (``time.process_time``, all threads of that process) from start to final report,
so other processes sharing the machine do not inflate it. Trials are taken in the order they
finished; after each one the Pareto hypervolume of the finished candidates is computed with
``evaluators.hypervolume_2d`` over (cross-model mAP, FLOPs), reference point (mAP 0, paragon FLOPs).
For every mode the bench reports the cumulative trial CPU-seconds at which that hypervolume first
reaches the scratch search's final hypervolume, and its ratio to what scratch needs to reach it.

    .venv/bin/python bench/supernet_inheritance.py [--workdir DIR] [--gallery CKPT] [--set a.b=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parent.parent
MODES = ("scratch", "inherit", "inherit_zero_shot")
NEAR_FRACTION = 0.99
# The budget of this bench on a shared 2-core CPU: the quickstart search with random proposals,
# 5,000 training images, and a short supernet training.
BENCH_DEFAULTS = [
    "data.train_size=5000",
    "search.strategy=random",
    "search.num_candidates=8",
    "supernet.epochs=3",
    "supernet.num_random_subnets=1",
    "training.finetune_epochs=1",
]


def build_config(workdir: Path, gallery: Path | None, overrides: list[str], mode: str):
    from orchestrator.config import apply_override, validate_config

    tree = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for assignment in [*BENCH_DEFAULTS, *overrides, f"training.mode={mode}", f"tracking.run_name=bench-{mode}",
                       f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "tracking.experiment=cmpnas-bench-supernet",
                       f"output_dir={workdir / 'out'}", f"supernet.checkpoint={workdir / 'supernet.safetensors'}"]:
        apply_override(tree, assignment)
    if gallery is not None:
        apply_override(tree, f"gallery.checkpoint={gallery}")
    return validate_config(tree, source="bench")


def reach_of(curve: list[tuple[float, float, str]], volume: float) -> float | None:
    """Cumulative trial CPU-seconds at which ``curve`` first reaches ``volume`` (None: never)."""
    return next((spent for spent, reached, _ in curve if reached >= volume), None)


def hypervolume_curve(runs, paragon_flops: float) -> list[tuple[float, float, str]]:
    """(cumulative trial CPU-seconds, hypervolume so far, arch id) after each finished trial."""
    from evaluators import hypervolume_2d

    ordered = sorted(runs, key=lambda run: run.info.end_time)
    points, spent, curve = [], 0.0, []
    for run in ordered:
        metrics = run.data.metrics
        spent += metrics["final_trial_cpu_seconds"]
        points.append((metrics["final_cross_map"], metrics["final_flops"]))
        curve.append((spent, hypervolume_2d(points, (0.0, paragon_flops), ("max", "min")), run.data.params["arch_id"]))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--gallery", type=Path, default=None,
                        help="reuse this gallery checkpoint (default: trained on first use, not counted in trials)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run now (comma-separated)")
    parser.add_argument("--reuse", action="append", default=[], metavar="MODE=RUN_ID",
                        help="take a mode's results from an earlier search's parent run in this folder's MLflow "
                             "(its FINISHED candidates only), e.g. after an interrupted bench")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cmpnas-supernet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gallery = None
    if args.gallery is not None:
        gallery = workdir / "gallery.safetensors"
        shutil.copyfile(args.gallery, gallery)

    from rich.console import Console

    from orchestrator.search.driver import run_search
    from orchestrator.supernet.job import train_supernet_job
    from orchestrator.tracking.client import SearchTracker
    from workers.compatibility.supernet_checkpoint import load_supernet

    console = Console(width=150)
    wall: dict[str, float] = {}
    if (workdir / "supernet.safetensors").is_file():
        # A rerun in the same folder (e.g. after an interrupted search) reuses the supernet and its recorded cost.
        info = load_supernet(workdir / "supernet.safetensors").info
        supernet = SimpleNamespace(train_seconds=info["train_seconds"], cpu_seconds=info["cpu_seconds"])
        console.print(f"reusing {workdir / 'supernet.safetensors'} ({info['cpu_seconds']:.0f} CPU-seconds)")
    else:
        supernet = train_supernet_job(build_config(workdir, gallery, args.overrides, "scratch"), console)
    gallery = gallery or build_config(workdir, None, args.overrides, "scratch").gallery_checkpoint_path

    parents = dict(item.split("=", 1) for item in args.reuse)
    config = build_config(workdir, gallery, args.overrides, "scratch")
    for mode in [m for m in args.modes.split(",") if m and m not in parents]:
        config = build_config(workdir, gallery, args.overrides, mode)
        started = time.perf_counter()
        parents[mode] = run_search(config, console).parent_run_id
        wall[mode] = time.perf_counter() - started
        console.print(f"{mode}: parent run {parents[mode]}, {wall[mode]:.0f} s")

    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    if set(parents) != set(MODES):
        console.print(f"ran {sorted(parents)}; pass the others with --reuse MODE=RUN_ID to get the report: {parents}")
        return
    finished = {mode: [run for run in tracker.child_runs(parents[mode]) if run.info.status == "FINISHED"]
                for mode in MODES}
    paragon_flops = tracker.client.get_run(parents["scratch"]).data.metrics["paragon_flops"]
    search_walls = {mode: tracker.client.get_run(parents[mode]).data.metrics.get("search_wall_seconds", float("nan"))
                    for mode in MODES}
    curves = {mode: hypervolume_curve(finished[mode], paragon_flops) for mode in MODES}
    target = curves["scratch"][-1][1]
    # What each mode is compared on: the trial compute it needs to reach that hypervolume, scratch included.
    scratch_reach = reach_of(curves["scratch"], target * (1 - 1e-9))
    # The cross-model metric saturates near the gallery's own level, so fronts differ by fractions of
    # a point; a 99% threshold, reached or not by each mode alike, shows the cost of "almost as good".
    near = NEAR_FRACTION * target
    scratch_near = reach_of(curves["scratch"], near)
    settings = dict(item.split("=", 1) for item in [*BENCH_DEFAULTS, *args.overrides])

    lines = [
        f"### Supernet inheritance, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs; "
        "load average (1, 5, 15 min) at the report: " + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        f"- command: `.venv/bin/python bench/supernet_inheritance.py {' '.join('--set ' + o for o in args.overrides)}`"
        + (" (gallery checkpoint reused)" if args.gallery else ""),
        f"- settings: {', '.join(f'{key}={value}' for key, value in settings.items())}; quickstart otherwise (FLOPs budget "
        f"{config.search.max_mflops} MFLOPs, {config.training.epochs} epochs from scratch)",
        f"- supernet: {supernet.train_seconds:.0f} s wall, {supernet.cpu_seconds:.0f} CPU-seconds "
        f"({config.supernet.epochs} epochs, largest + smallest + {config.supernet.num_random_subnets} random "
        f"subnets per step, distillation {'on' if config.supernet.distillation else 'off'})",
        f"- hypervolume: cross-model mAP x FLOPs, reference (0, paragon {paragon_flops / 1e6:.1f} MFLOPs); target = "
        f"scratch's final hypervolume {target / 1e6:.2f} (mAP-points x MFLOPs)",
        "",
        "| mode | trials | trial CPU-s total | final HV (% of target) | CPU-s to reach scratch's final HV | "
        "less than scratch needs for it | incl. supernet | CPU-s to reach 99% of it (scratch: "
        f"{'-' if scratch_near is None else f'{scratch_near:.0f}'}) | search wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        curve = curves[mode]
        reach = reach_of(curve, target * (1 - 1e-9))
        reach_near = reach_of(curve, near)
        near_cell = "not reached" if reach_near is None else (
            f"{reach_near:.0f} ({scratch_near / reach_near:.1f}x less than scratch)")
        if reach is None:
            reached, ratio, with_supernet = "not reached", "-", "-"
        else:
            reached = f"{reach:.0f}"
            ratio = f"{scratch_reach / reach:.1f}x"
            cost = reach + (supernet.cpu_seconds if mode != "scratch" else 0.0)
            with_supernet = f"{scratch_reach / cost:.2f}x ({cost:.0f} CPU-s)"
        lines.append(f"| {mode} | {len(curve)} | {curve[-1][0]:.0f} | {curve[-1][1] / 1e6:.2f} "
                     f"({100 * curve[-1][1] / target:.2f}%) | {reached} | {ratio} | {with_supernet} | {near_cell} | "
                     f"{search_walls[mode]:.0f} |")
    lines += ["", "Hypervolume after each finished trial (cumulative trial CPU-s: HV in mAP-points x MFLOPs):"]
    for mode in MODES:
        lines.append(f"- {mode}: " + ", ".join(f"{spent:.0f}: {volume / 1e6:.2f}" for spent, volume, _ in curves[mode]))
    lines.append("")
    lines.append("Per candidate (same order in every mode), final cross-model mAP:")
    by_arch = {mode: {run.data.params["arch_id"]: run.data.metrics for run in finished[mode]} for mode in MODES}
    lines.append("| arch | MFLOPs | " + " | ".join(f"{m} mAP | {m} CPU-s" for m in MODES) + " |")
    lines.append("|---|---|" + "---|---|" * len(MODES))
    for arch_id, metrics in by_arch["scratch"].items():
        cells = []
        for mode in MODES:
            other = by_arch[mode].get(arch_id)
            cells += [f"{other['final_cross_map']:.2f}", f"{other['final_trial_cpu_seconds']:.1f}"] if other else ["-", "-"]
        lines.append(f"| {arch_id} | {metrics['final_mflops']:.2f} | " + " | ".join(cells) + " |")
    report = "\n".join(lines)
    print(report)
    (workdir / "supernet_inheritance.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
