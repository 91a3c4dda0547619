"""A team's first search on a small folder, with default settings: does it reach compatibility?

Writes 5,000 Fashion-MNIST training images as PNGs (500 per class, the first of each class in the
official file) into ``WORKDIR/images/<class>/``, then runs ``cmpnas search`` on that folder with
the embedded defaults, changing only what a folder needs (``data.source``, ``data.root``) and the
split sizes that fit it (query 400, gallery 1,600: train is the other 3,000). With 3,000 training
images, the default 3 epochs of batch 256 are 36 optimizer steps; ``training.min_steps`` raises
them. Reads back each candidate's cross-model and homogeneous R@1, its compatibility verdict and
the epochs it trained, and writes ``bench/results/small_collection.json``.

    python bench/small_collection.py --workdir /tmp/small-collection [--set training.min_steps=0]

``--set`` adds config overrides (e.g. ``training.min_steps=0`` shows the old behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PER_CLASS = 500


def write_folder(root: Path) -> None:
    if (root / "DONE").exists():
        return
    from PIL import Image

    from workers.datasets.fashion_mnist import CLASS_NAMES, load_arrays, locate

    images, labels = load_arrays(locate(None, download=False))["train"]
    for label, name in enumerate(CLASS_NAMES):
        folder = root / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for number, index in enumerate(list((labels == label).nonzero()[0][:PER_CLASS])):
            Image.fromarray(images[index, 0]).save(folder / f"{number:04d}.png")
    (root / "DONE").write_text("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "small_collection.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    write_folder(workdir / "images")
    label = "-".join(o.replace("=", "_").replace(".", "_") for o in args.overrides) or "defaults"
    output_dir = workdir / f"search-{label}"
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    overrides = ["data.source=image_folder", f"data.root={workdir / 'images'}", "data.train_size=null",
                 "data.query_size=400", "data.gallery_size=1600", f"output_dir={output_dir}",
                 f"tracking.uri={tracking}", f"tracking.experiment=small-collection-{label}", *args.overrides]
    load_before = os.getloadavg()
    started = time.perf_counter()
    command = [str(Path(sys.executable).parent / "cmpnas"), "search"] + [x for o in overrides for x in ("--set", o)]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    (workdir / f"{label}.log").write_text(done.stdout + done.stderr)
    wall = time.perf_counter() - started

    from orchestrator.tracking.client import SearchTracker

    tracker = SearchTracker.open_existing(tracking, f"small-collection-{label}")
    parent = tracker.client.search_runs([tracker.experiment_id], order_by=["attributes.start_time DESC"],
                                        max_results=1, filter_string="tags.`cmpnas.role` = 'search'")[0]
    candidates = []
    for run in tracker.child_runs(parent.info.run_id):
        metrics, tags = run.data.metrics, run.data.tags
        candidates.append({"arch": run.data.params.get("arch_id", run.info.run_name),
                           "epochs": len(tracker.client.get_metric_history(run.info.run_id, "loss")),
                           "cross_r1": round(metrics.get("final_cross_r1", float("nan")), 2),
                           "homo_r1": round(metrics.get("final_homo_r1", float("nan")), 2),
                           "compatibility": tags.get("cmpnas.compatibility", "-")})
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "overrides": args.overrides, "exit_status": done.returncode, "wall_seconds": round(wall, 1),
              "paragon_r1": parent.data.metrics.get("paragon_r1"),
              "compatibility_failed": parent.data.metrics.get("compatibility_failed"),
              "candidates": sorted(candidates, key=lambda row: row["cross_r1"], reverse=True)}
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results[label] = result
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
