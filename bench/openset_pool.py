"""Does an unlabelled pool close the unseen-class gap? Open-set searches with and without the pool,
the same splits, paragon and seeds (issue 30).

Each cell is one ``cmpnas search`` of ``--config`` (default ``configs/openset_fashion_unlabelled.yaml``:
labels on 5 classes, the pool the train file's images of the 5 evaluated classes without labels)
with ``search.seed`` = the cell's seed and ``training.unlabelled_weight`` = 1 (``pool``) or 0
(``no_pool``: the same splits, the pool unused: a weight of 0 skips its batches). Every cell of a
config shares one paragon: the first cell trains it, the others load it (``gallery.checkpoint``).

Per cell: the paragon's held-out R@1/mAP (the searched classes, never ranked on), and per candidate
its validation score (``search.metric`` on the validation split of the trained classes: what the
search ranks on) and held-out cross-model R@1/mAP. The **pick** of a cell is the candidate the search
would ship: the best on validation, never on held-out figures; its gap is the paragon's held-out
R@1 minus the pick's. Every seed run counts: the summary is the mean over seeds with a 95 % t
interval (and the range), and the pool's effect is the paired difference of the picks (same seed).

Cells are resumable: a finished cell's figures are kept in ``WORKDIR/cells.json`` and not rerun.

    python bench/openset_pool.py --workdir /tmp/openset-pool --seeds 0 1 2
    python bench/openset_pool.py --workdir /tmp/pool-apart --config configs/openset_fashion_pool_apart.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_record import machine_record  # noqa: E402 - bench/, beside this script

ARMS = {"pool": 1.0, "no_pool": 0.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "openset_fashion_unlabelled.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", action="append", default=[], help="a config override for every cell")
    parser.add_argument("--results", type=Path, default=None, help="default: bench/results/openset_pool_<config>.json")
    return parser.parse_args()


def cell_config(args: argparse.Namespace, arm: str, seed: int):
    from orchestrator.config import load_config

    folder = args.workdir / f"{arm}-s{seed}"
    paragon = args.workdir / "paragon.safetensors"
    overrides = [f"search.seed={seed}", f"training.unlabelled_weight={ARMS[arm]}",
                 f"tracking.uri=sqlite:///{args.workdir / 'mlflow.db'}", f"tracking.experiment=openset-pool-{arm}",
                 f"output_dir={folder}", *([f"gallery.checkpoint={paragon}"] if paragon.is_file() else []), *args.set]
    return load_config(args.config, overrides=overrides), overrides


def run_cell(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """Search one cell and read its figures back from the tracking store."""
    from rich.console import Console

    from orchestrator.search.driver import run_search

    config, overrides = cell_config(args, arm, seed)
    started = time.perf_counter()
    outcome = run_search(config, Console(width=160))
    seconds = time.perf_counter() - started
    paragon = args.workdir / "paragon.safetensors"
    if not paragon.is_file():
        paragon.write_bytes(Path(config.gallery_checkpoint_path).read_bytes())
    return {"arm": arm, "seed": seed, "overrides": overrides, "seconds": round(seconds, 1),
            "load_after": round(os.getloadavg()[0], 2), **recorded_figures(config, outcome.parent_run_id)}


def recorded_figures(config, parent_run_id: str) -> dict:
    from orchestrator.tracking.client import SearchTracker
    from orchestrator.tracking.tags import ROLE_CANDIDATE, ROLE_TAG

    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(parent_run_id).data.metrics
    measure = config.search.metric
    candidates = []
    for run in tracker.child_runs(parent_run_id):
        metrics = run.data.metrics
        if run.data.tags.get(ROLE_TAG) != ROLE_CANDIDATE or "final_heldout_cross_r1" not in metrics:
            continue
        candidates.append({"run_id": run.info.run_id, "arch_id": run.data.params.get("arch_id", ""),
                           "mflops": metrics.get("final_mflops"), "validation": metrics[f"final_{measure}"],
                           "heldout_r1": metrics["final_heldout_cross_r1"],
                           "heldout_map": metrics["final_heldout_cross_map"]})
    pick = max(candidates, key=lambda row: row["validation"])
    return {"parent_run_id": parent_run_id, "paragon_heldout_r1": parent["paragon_heldout_r1"],
            "paragon_heldout_map": parent["paragon_heldout_map"], "ranked_on": f"final_{measure}",
            "candidates": candidates, "pick": pick, "gap_r1": parent["paragon_heldout_r1"] - pick["heldout_r1"]}


def interval(values: list[float]) -> dict:
    """Mean, a 95 % t interval over seeds, and the range."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "n": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "min": float(values.min()),
            "max": float(values.max()), "n": len(values)}


def summary(cells: list[dict]) -> dict:
    """Per arm: the pick's held-out R@1 and mAP, its gap and the paragon's R@1 over seeds; and the
    pool's paired effect on the pick's held-out R@1 (seeds run in both arms)."""
    out = {}
    for arm in ARMS:
        rows = [cell for cell in cells if cell["arm"] == arm]
        if rows:
            out[arm] = {"seeds": [row["seed"] for row in rows],
                        "pick_heldout_r1": interval([row["pick"]["heldout_r1"] for row in rows]),
                        "pick_heldout_map": interval([row["pick"]["heldout_map"] for row in rows]),
                        "gap_r1": interval([row["gap_r1"] for row in rows]),
                        "paragon_heldout_r1": interval([row["paragon_heldout_r1"] for row in rows])}
    pick = {(cell["arm"], cell["seed"]): cell["pick"]["heldout_r1"] for cell in cells}
    paired = sorted(seed for arm, seed in pick if arm == "pool" and ("no_pool", seed) in pick)
    if paired:
        out["pool_minus_no_pool_r1"] = interval([pick[("pool", seed)] - pick[("no_pool", seed)] for seed in paired])
    return out


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / "cells.json"
    cells = json.loads(store.read_text()) if store.is_file() else []
    for seed in args.seeds:
        for arm in args.arms:
            if any(cell["arm"] == arm and cell["seed"] == seed for cell in cells):
                continue
            print(f"== {arm}, seed {seed} (load {os.getloadavg()[0]:.2f})", flush=True)
            cells.append(run_cell(args, arm, seed))
            store.write_text(json.dumps(cells, indent=1) + "\n")
    results = args.results or REPO / "bench" / "results" / f"openset_pool_{args.config.stem}.json"
    report = {"machine": machine_record(),
              "config": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO) else str(args.config),
              "cells": cells, "summary": summary(cells)}
    results.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
