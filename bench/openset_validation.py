"""Which validation can rank candidates for classes no model saw? Rank correlation of validation
options with the held-out unseen-class R@1 across the candidates of one open-set search (issue 30).

The search (``configs/open_set.yaml`` with the bench's settings, or ``--from-run`` a finished one
recorded in ``--workdir``) trains on some classes, validates on others and is evaluated on a third,
disjoint set (``data.validation_classes``: classes that neither train nor are evaluated). For every
candidate the bench takes, or measures:

* ``class_disjoint_r1`` / ``class_disjoint_map``: the search's own validation score, cross-model on
  the validation classes' images (``final_cross_r1``/``final_cross_map``: what it ranked on);
* ``agreement``: the label-free neighbour agreement on the same images (``final_cross_agreement``,
  ``evaluation.agreement_k``; ``evaluators.agreement``), no label read;
* ``seen_class_r1``: what a seen-class validation split measures, re-measured here on images of the
  **trained** classes that no model trained on (the test file's images of those classes, split
  query/gallery stratified, seeded), cross-model: the old protocol's ranking signal;
* the target, ``heldout_r1`` (and ``heldout_map``): cross-model on the held-out unseen classes
  (``final_heldout_cross_*``), never ranked on.

Each option's Spearman rho with ``heldout_r1`` is reported with its 95 % bootstrap interval over
candidates (``evaluators.rank_correlation``). The JSON goes to ``bench/results/openset_validation.json``.

    python bench/openset_validation.py --workdir /tmp/openset-validation            # runs the search
    python bench/openset_validation.py --workdir /tmp/openset-validation --from-run <parent run id | latest>
    python bench/openset_validation.py --workdir /tmp/ov --set search.num_candidates=24 --set training.epochs=3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluators import create_task  # noqa: E402
from evaluators.rank_correlation import spearman_interval  # noqa: E402
from orchestrator.config import CmpnasConfig, load_config  # noqa: E402
from orchestrator.export.package import load_candidate  # noqa: E402
from orchestrator.tracking.client import SearchTracker  # noqa: E402
from orchestrator.tracking.tags import ROLE_CANDIDATE, ROLE_TAG  # noqa: E402
from workers.datasets.fashion_mnist import MEAN, STD, load_arrays, locate  # noqa: E402
from workers.datasets.splits import stratified_split  # noqa: E402
from workers.gallery.model import load_gallery  # noqa: E402
from workers.gallery.sources.cmpnas_checkpoint import CmpnasGalleryModel  # noqa: E402
from workers.trial_report import MODEL_FILE, SPEC_FILE  # noqa: E402
from workers.training.preprocess import ModelInput, embed_images  # noqa: E402

# The bench's protocol over configs/open_set.yaml: 5 classes in the train file's pool, of which
# pullover and coat validate (never trained), t-shirt/top, trouser and dress train; sandal ... ankle
# boot are evaluated (held out). Trials report the label-free agreement beside the labelled metrics.
PROTOCOL = ("data.validation_classes=[pullover, coat]", "data.validation_size=1000", "evaluation.agreement_k=10",
            "resources.measure_latency=false")
OPTIONS = ("class_disjoint_r1", "class_disjoint_map", "agreement", "seen_class_r1")
SEEN_QUERY_SHARE = 1 / 3  # of the trained classes' test images: a third query, the rest gallery


def bench_config(args: argparse.Namespace) -> CmpnasConfig:
    workdir = Path(args.workdir)
    where = (f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "tracking.experiment=cmpnas-openset-validation",
             f"output_dir={workdir / 'out'}")
    return load_config(REPO / "configs" / "open_set.yaml", overrides=[*PROTOCOL, *where, *args.set])


def run_or_find_search(config: CmpnasConfig, from_run: str | None) -> str:
    """The search's parent run id: ``--from-run`` (``latest``: the newest search in the store, e.g. one still
    running, read as far as its candidates finished), else the id of a search run now."""
    if from_run == "latest":
        from orchestrator.export.selection import latest_search_run_id

        return latest_search_run_id(SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment))
    if from_run:
        return from_run
    from rich.console import Console

    from orchestrator.search.driver import run_search

    return run_search(config, Console(width=160)).parent_run_id


def recorded_candidates(tracker: SearchTracker, parent_run_id: str) -> list:
    runs = [run for run in tracker.child_runs(parent_run_id)
            if run.data.tags.get(ROLE_TAG) == ROLE_CANDIDATE and "final_heldout_cross_r1" in run.data.metrics]
    return sorted(runs, key=lambda run: run.info.run_id)


def seen_class_split(config: CmpnasConfig, trained: np.ndarray):
    """The test file's images of the trained classes (no model trained on them), split query/gallery."""
    images, labels = load_arrays(locate(config.data.root, config.data.download))["test"]
    pool = np.flatnonzero(np.isin(labels, trained))
    query_size = int(len(pool) * SEEN_QUERY_SHARE)
    query, gallery = stratified_split(labels[pool], [query_size, len(pool) - query_size], config.data.seed)
    return (images[pool[query]], labels[pool[query]]), (images[pool[gallery]], labels[pool[gallery]])


def seen_class_r1(tracker: SearchTracker, run, split, gallery_embeddings: np.ndarray, workdir: Path) -> float:
    """A candidate's cross-model R@1 on the trained classes' unseen images (its recorded weights)."""
    folder = Path(tracker.client.download_artifacts(run.info.run_id, "model", str(workdir / "models" / run.info.run_id)))
    spec, network = load_candidate(folder / MODEL_FILE, folder / SPEC_FILE)
    (query_images, query_labels), (_, gallery_labels) = split
    # Fashion-MNIST's fixed statistics, which the search normalised with.
    queries = embed_images(network, query_images, ModelInput(MEAN, STD, spec.resolution, torch.device("cpu")))
    metrics = create_task("retrieval").evaluate(queries, query_labels, gallery_embeddings, gallery_labels, "seen")
    return metrics["seen_r1"]


def candidate_rows(config: CmpnasConfig, tracker: SearchTracker, parent_run_id: str, workdir: Path) -> list[dict]:
    runs = recorded_candidates(tracker, parent_run_id)
    gallery = CmpnasGalleryModel(load_gallery(config.gallery_checkpoint_path))
    split = seen_class_split(config, np.array(trained_labels(config)))
    gallery_images = split[1][0]
    gallery_embeddings = gallery.embed(gallery_images, [str(i) for i in range(len(gallery_images))],
                                       torch.device("cpu"), 512)
    rows = []
    for run in runs:
        metrics = run.data.metrics
        rows.append({
            "run_id": run.info.run_id, "arch_id": run.data.params.get("arch_id", ""),
            "mflops": metrics.get("final_mflops"),
            "class_disjoint_r1": metrics["final_cross_r1"], "class_disjoint_map": metrics["final_cross_map"],
            "agreement": metrics.get("final_cross_agreement", float("nan")),
            "seen_class_r1": seen_class_r1(tracker, run, split, gallery_embeddings, workdir),
            "heldout_r1": metrics["final_heldout_cross_r1"], "heldout_map": metrics["final_heldout_cross_map"]})
    return rows


def trained_labels(config: CmpnasConfig) -> list[int]:
    """The classes the search trained on: the selection view's train labels."""
    from orchestrator.setup.data import load_search_data

    return sorted(set(load_search_data(config).selection.train.labels.tolist()))


def correlations(rows: list[dict]) -> dict[str, dict]:
    target = np.array([row["heldout_r1"] for row in rows])
    out = {}
    for option in OPTIONS:
        values = np.array([row[option] for row in rows], dtype=np.float64)
        if np.isnan(values).any():
            out[option] = {"skipped": "not recorded for every candidate"}
            continue
        out[option] = spearman_interval(values, target).as_dict()
    return out


def render(result: dict) -> str:
    lines = [f"search {result['search_run_id']}: {len(result['candidates'])} candidates, "
             f"{result['settings']['training.epochs']} epoch(s) each", "",
             "| validation option | Spearman rho with held-out unseen-class R@1 | 95 % interval |", "|---|---|---|"]
    for option, value in result["spearman"].items():
        if "estimate" in value:
            lines.append(f"| {option} | {value['estimate']:.2f} | [{value['low']:.2f}, {value['high']:.2f}] |")
        else:
            lines.append(f"| {option} | {value['skipped']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="where the search's MLflow store and outputs live")
    parser.add_argument("--from-run", default=None, help="a search (MLflow parent run id, or latest) in the workdir")
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. search.num_candidates=24")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "openset_validation.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    config = bench_config(args)
    parent_run_id = run_or_find_search(config, args.from_run)
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    rows = candidate_rows(config, tracker, parent_run_id, Path(args.workdir))
    result = {"search_run_id": parent_run_id, "candidates": rows, "spearman": correlations(rows),
              "settings": {"overrides": [*PROTOCOL, *args.set], "training.epochs": config.training.epochs,
                           "search.num_candidates": config.search.num_candidates,
                           "data.validation_classes": config.data.validation_classes},
              "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
              "seconds": round(time.perf_counter() - started, 1)}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
