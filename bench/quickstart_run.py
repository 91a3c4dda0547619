"""Run the embedded default search end to end and measure it as a user would see it.

Measures wall time, peak memory of the whole process tree (driver, Ray daemons and workers,
sampled every 0.5 s), the largest number of trials that ran at once (from MLflow run times),
and reads the front back from MLflow: the cheapest front candidate within 8 R@1 points of the
paragon and its cost reduction. Prints a Markdown block for docs/benchmarks.md.

    .venv/bin/python bench/quickstart_run.py [--workdir DIR] [--set section.field=value ...]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run_record import cpu_description  # noqa: E402
from search_space.depthwise import onednn_isa_cap  # noqa: E402


def sample_peak_rss(process: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        total = 0
        try:
            for member in [process, *process.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak[0] = max(peak[0], total)
        time.sleep(0.5)


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = best = 0
    for _, change in events:
        running += change
        best = max(best, running)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cmpnas-quickstart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cmpnas = shutil.which("cmpnas", path=str(Path(sys.executable).parent)) or "cmpnas"
    command = [cmpnas, "search", "--config", str(REPO / "configs" / "quickstart.yaml")]
    for override in args.overrides:
        command += ["--set", override]

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=sample_peak_rss, args=(psutil.Process(process.pid), stop, peak), daemon=True)
    sampler.start()
    code = process.wait()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if code != 0:
        sys.exit(f"cmpnas search exited with {code}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cmpnas-quickstart")
    parent = client.search_runs([experiment.experiment_id], "tags.`cmpnas.role` = 'search'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # With a validation split (the quickstart's), figures are the held-out ones: the front was chosen on validation.
    held = "heldout_" if "paragon_heldout_r1" in parent.data.metrics else ""
    paragon_r1 = parent.data.metrics[f"paragon_{held}r1"]
    front = sorted((run for run in children if run.data.tags.get("pareto") == "true"),
                   key=lambda run: run.data.metrics["final_mflops"])
    qualifying = [run for run in front if run.data.metrics["final_cost_reduction"] >= 10
                  and paragon_r1 - run.data.metrics[f"final_{held}cross_r1"] <= 8]
    concurrency = max_overlap([(run.info.start_time, run.info.end_time) for run in children])
    metrics = parent.data.metrics

    cpu, flags = cpu_description()
    # A cap on oneDNN's instruction set changes which kernels the search ran (search_space.depthwise).
    cap = onednn_isa_cap()
    caps = [f"oneDNN capped at {cap}"] if cap else []
    print(f"\n### Quickstart search, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {cpu} "
          f"({', '.join(flags + caps) or 'no vector flags read'}), {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB")
    print(f"- command: `{' '.join(Path(part).name if i == 0 else part for i, part in enumerate(command))}`")
    print(f"- wall time {wall / 60:.1f} min (gallery training {metrics.get('stage_gallery_model_seconds', 0):.0f} s, "
          f"gallery embedding {metrics.get('stage_gallery_embedding_seconds', 0):.0f} s, "
          f"trials {metrics.get('stage_trials_seconds', 0):.0f} s); peak memory of the process tree "
          f"{peak[0] / 2**30:.2f} GiB")
    print(f"- candidates finished {len(children)}, at most {concurrency} running at once; gallery images embedded "
          f"{metrics['gallery_images_embedded']:.0f} (once)")
    where = "held out" if held else "query/gallery"
    print(f"- paragon ({where}): {metrics['paragon_mflops']:.1f} MFLOPs, R@1 {paragon_r1:.2f}, "
          f"mAP {metrics[f'paragon_{held}map']:.2f}")
    print(f"\n| front candidate | MFLOPs | cost x | cross R@1 ({where}) | cross mAP | homo R@1 | gap R@1 | latency ms |")
    print("|---|---|---|---|---|---|---|---|")
    for run in front:
        m = run.data.metrics
        print(f"| {run.data.params['arch_id']} | {m['final_mflops']:.2f} | {m['final_cost_reduction']:.1f} | "
              f"{m[f'final_{held}cross_r1']:.2f} | {m[f'final_{held}cross_map']:.2f} | {m[f'final_{held}homo_r1']:.2f} | "
              f"{paragon_r1 - m[f'final_{held}cross_r1']:.2f} | {m['final_latency_ms']:.2f} |")
    verdict = "yes" if qualifying else "no"
    print(f"\nFront holds a candidate >= 10x cheaper within 8 R@1 points of the paragon: {verdict}")


if __name__ == "__main__":
    main()
