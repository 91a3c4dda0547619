"""Which label-free loss should train on the unlabelled pool? One fixed query architecture trained
under each loss setting on an open-set config, 3 seeds each, against one frozen paragon (issue 30).

Protocol (fixed before any of its results, committed with this script):

- data, paragon, schedule: ``--config`` as it is (default ``configs/openset_fashion_unlabelled.yaml``:
  labels on 5 classes, the pool the train file's 30,000 images of the 5 evaluated classes without
  labels; query and gallery the test file's images of those 5 classes). ``--set`` overrides apply to
  every run, e.g. ``gallery.checkpoint=`` the open-set pool bench's paragon, so both benches measure
  against the same model.
- architecture: ``ARCHITECTURE``, the `mnv3_28` candidate ``abcab45d416b`` (2.56 MFLOPs), picked on
  validation by the pooled search of seed 0 (``bench/openset_pool.py``) and also on the quickstart's
  front; one architecture, so that the loss is the only thing that changes.
- settings (``SETTINGS``): each label-free loss alone (the labelled images train through it too,
  their labels unread), and each beside the labelled losses (``own_classifier`` 1 and
  ``bct_influence`` 1), at the weights the closed-set study used (``cosine_alignment`` 10,
  ``l2_regression`` 5, half of it since on unit vectors it is twice that loss, ``relational`` 1);
  the pool at ``training.unlabelled_weight`` 1; and the search's own setting without the pool
  (``unlabelled_weight`` 0: the same labelled batches, the pool unused), the baseline.
- seeds 0, 1, 2 (``search.seed``: the weights drawn and the batch order); every run counts.
- figures: held-out cross-model R@1 and mAP on the unseen classes (reported only), the validation
  cross-model mAP on the seen classes (what a search would rank on), per seed and as a mean with a
  95 % t interval; the paired difference of each setting to the baseline, by seed.
- the training is the search's trial (``workers.trial``) in this process's workers, one thread each,
  two at a time: Ray and MLflow are left out, so the figures are the trial's, not a search's.

Runs are resumable: each finished run is kept in ``WORKDIR/runs.json`` and not run again.

    python bench/openset_losses.py --workdir /tmp/openset-losses --set gallery.checkpoint=/tmp/openset-pool/paragon.safetensors
    python bench/openset_losses.py --workdir /tmp/pool-apart --config configs/openset_fashion_pool_apart.yaml \
        --settings "labelled + cosine_alignment" "labelled + cosine_alignment, no pool"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openset_pool import interval  # noqa: E402 - bench/, beside this script
from run_record import machine_record  # noqa: E402

ARCHITECTURE = ('{"embed_dim":128,"in_chans":1,"resolution":24,"space":"mnv3_28","stages":['
                '{"depth":1,"expand":3,"kernel":5,"width":16},{"depth":1,"expand":6,"kernel":7,"width":32},'
                '{"depth":1,"expand":4,"kernel":7,"width":32},{"depth":3,"expand":3,"kernel":5,"width":32},'
                '{"depth":1,"expand":4,"kernel":7,"width":64}]}')
LABELLED = {"own_classifier": 1.0, "bct_influence": 1.0}
LABEL_FREE = {"cosine_alignment": 10.0, "l2_regression": 5.0, "relational": 1.0}
BASELINE = "labelled + cosine_alignment, no pool"


@dataclass(frozen=True)
class LossSetting:
    """The loss weights of one row, and how much the pool's batch counts (0: the pool does not train)."""

    loss_weights: dict[str, float]
    unlabelled_weight: float = 1.0


SETTINGS: dict[str, LossSetting] = {
    **{f"{name} alone": LossSetting({name: weight}) for name, weight in LABEL_FREE.items()},
    **{f"labelled + {name}": LossSetting({**LABELLED, name: weight}) for name, weight in LABEL_FREE.items()},
    BASELINE: LossSetting({**LABELLED, "cosine_alignment": LABEL_FREE["cosine_alignment"]}, 0.0),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "openset_fashion_unlabelled.yaml")
    parser.add_argument("--set", action="append", default=[], help="a config override for every run")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: bench/results/openset_losses_<config>.json")
    return parser.parse_args()


def prepare(args: argparse.Namespace):
    """The config, the search's inputs (data, the pool, the gallery model's embeddings) and the paragon's figures."""
    from orchestrator.config import load_config
    from orchestrator.search.parent_run import measure_paragon
    from orchestrator.setup.gallery import paragon_cost
    from orchestrator.setup.inputs import prepare_search_inputs

    config = load_config(args.config, overrides=[f"output_dir={args.workdir}", *args.set])
    inputs = prepare_search_inputs(config, lambda message: print(message, flush=True)).embed_gallery(
        lambda message: print(message, flush=True))
    paragon = measure_paragon(config, inputs, paragon_cost(config, inputs.gallery_model))
    return config, inputs, paragon


def shared_inputs(config, inputs, paragon):
    """What every run gets: the search's own ``shared_trial_inputs``, without latency timing (not measured here)."""
    from types import SimpleNamespace

    from orchestrator.search.trials import shared_trial_inputs

    context = SimpleNamespace(config=config, inputs=inputs, paragon=paragon, supernet_state=None)
    shared = shared_trial_inputs(context, config.training.epochs_for(len(inputs.data.train)))
    return replace(shared, measure_latency=False, threads_per_trial=1)


def run_one(shared, setting_name: str, seed: int) -> dict:
    """Train ``ARCHITECTURE`` under one setting and seed, as a search's trial does; its figures after the last epoch."""
    import torch

    from search_space import ArchSpec
    from workers.compatibility.candidate import fine_tune_candidate
    from workers.compatibility.training import TrainingRun
    from workers.training.fit import EpochHooks
    from workers.trial import _CandidateTrial

    torch.set_num_threads(1)
    setting = SETTINGS[setting_name]
    training = replace(shared.training, loss_weights=dict(setting.loss_weights),
                       unlabelled_weight=setting.unlabelled_weight, optim=replace(shared.training.optim, seed=seed))
    shared = replace(shared, training=training)
    spec = ArchSpec.from_json(ARCHITECTURE)
    torch.manual_seed(seed)  # as run_candidate_trial: seeded before the weights are drawn
    trial = _CandidateTrial(spec, shared, torch.device("cpu"))
    figures: dict[str, float] = {}
    started, started_cpu = time.perf_counter(), time.process_time()

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        if epoch < training.optim.epochs:
            return
        data = shared.data
        figures.update(trial.task.evaluate(trial.embed(data.query), data.query.labels, shared.gallery.gallery,
                                           data.gallery.labels, "validation_cross", data.pair_ids()))
        figures.update(trial._held_out_metrics())

    run = TrainingRun(shared.data, shared.gallery, torch.device("cpu"), None, EpochHooks(on_epoch=on_epoch))
    fine_tune_candidate(trial.model, spec.resolution, training, run)
    return {"setting": setting_name, "seed": seed, "epochs": training.optim.epochs,
            "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - started_cpu, 1),
            **{key: float(value) for key, value in figures.items()
               if key in ("validation_cross_map", "validation_cross_r1", "heldout_cross_r1", "heldout_cross_map",
                          "heldout_homo_r1")}}


def summary(runs: list[dict], paragon_r1: float) -> dict:
    """Per setting: held-out R@1, mAP and gap to the paragon over seeds, validation mAP; the paired
    difference in held-out R@1 to the baseline (same seed)."""
    out = {}
    baseline = {run["seed"]: run["heldout_cross_r1"] for run in runs if run["setting"] == BASELINE}
    for name in SETTINGS:
        rows = sorted((run for run in runs if run["setting"] == name), key=lambda run: run["seed"])
        if not rows:
            continue
        out[name] = {"seeds": [row["seed"] for row in rows],
                     "heldout_cross_r1": interval([row["heldout_cross_r1"] for row in rows]),
                     "heldout_cross_map": interval([row["heldout_cross_map"] for row in rows]),
                     "gap_r1": interval([paragon_r1 - row["heldout_cross_r1"] for row in rows]),
                     "validation_cross_map": interval([row["validation_cross_map"] for row in rows])}
        paired = [row["heldout_cross_r1"] - baseline[row["seed"]] for row in rows if row["seed"] in baseline]
        if name != BASELINE and paired:
            out[name]["minus_baseline_r1"] = interval(paired)
    return out


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / "runs.json"
    runs = json.loads(store.read_text()) if store.is_file() else []
    config, inputs, paragon = prepare(args)
    shared = shared_inputs(config, inputs, paragon)
    todo = [(name, seed) for seed in args.seeds for name in args.settings
            if not any(run["setting"] == name and run["seed"] == seed for run in runs)]
    print(f"{len(todo)} runs of {shared.training.optim.epochs} epochs, {args.workers} at a time "
          f"(load {os.getloadavg()[0]:.2f})", flush=True)
    # spawn: the parent's thread pools (the gallery pass) do not survive a fork safely.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, shared, name, seed) for name, seed in todo]
        for future in futures:
            runs.append({**future.result(), "load_after": round(os.getloadavg()[0], 2)})
            store.write_text(json.dumps(runs, indent=1) + "\n")
            print(json.dumps(runs[-1]), flush=True)
    paragon_r1 = paragon.metrics["paragon_heldout_r1"]
    results = args.results or REPO / "bench" / "results" / f"openset_losses_{args.config.stem}.json"
    report = {"machine": machine_record(), "config": str(args.config), "overrides": args.set,
              "architecture": ARCHITECTURE, "paragon_heldout_r1": paragon_r1,
              "paragon_heldout_map": paragon.metrics["paragon_heldout_map"],
              "settings": {name: {"loss_weights": SETTINGS[name].loss_weights,
                                  "unlabelled_weight": SETTINGS[name].unlabelled_weight} for name in args.settings},
              "runs": runs, "summary": summary(runs, paragon_r1)}
    results.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
