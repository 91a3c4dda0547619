"""The parent run of a search: found or created, tagged, and given what the search is and its paragon.

Rules:
* a search's parent run is found again by the search id it is tagged with (``SEARCH_ID_TAG``): a
  driver killed between creating it and recording its id must not leave a second parent behind;
* its Tune experiment path is derived from ``ray.storage_path`` and the parent run, never trusted
  from the state file (``orchestrator.search.state.check_recorded_tune_path``);
* what it records is written through the journal, keyed (``parent/params``, ``parent/datasets``,
  ``parent/paragon``, ...), so a resume writes nothing twice: the configuration (credentials
  redacted) as params and ``config.json``, the preprocessing of query and gallery models, the data
  splits as dataset inputs, the gallery model's identity (``gallery.json``), undecodable files
  (``bad_files.csv``), and the paragon's metrics and cost with the set-up stages' seconds.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from evaluators import FLOPS_CONVENTION, chance_level, create_task
from evaluators.complexity import ComplexityReport
from orchestrator.common.credentials import redact_tree
from orchestrator.common.version import cmpnas_version
from orchestrator.config import CmpnasConfig
from orchestrator.search.context import Paragon, SearchContext
from orchestrator.search.phases import SearchPhase
from orchestrator.search.state import SearchState, check_recorded_tune_path, tune_experiment_path
from orchestrator.setup.inputs import SearchInputs
from orchestrator.tracking.client import SearchTracker, config_params
from orchestrator.tracking.dataset_inputs import data_split_inputs
from orchestrator.tracking.journal import PARENT
from orchestrator.tracking.tags import (
    DATASET_TAG,
    FLOPS_CONVENTION_TAG,
    GALLERY_BACKBONE_TAG,
    GALLERY_FINGERPRINT_TAG,
    GALLERY_SOURCE_TAG,
    SEARCH_ID_TAG,
    SUPERNET_FINGERPRINT_TAG,
    TRAINING_MODE_TAG,
    VERSION_TAG,
)

# The gallery model's identity (source, fingerprint, input spec), in output_dir and on the parent run.
GALLERY_IDENTITY_FILE = "gallery.json"
# The files of the collection skipped as undecodable, with the reasons (on the parent run).
BAD_FILES_FILE = "bad_files.csv"


def measure_paragon(config: CmpnasConfig, inputs: SearchInputs, cost: ComplexityReport,
                    latency_ms: float | None = None) -> Paragon:
    """The gallery model against itself on the query and gallery splits, with its cost per image; with
    a validation split, on the validation halves (``paragon_*``, what candidates are ranked against)
    and on the held-out splits (``paragon_heldout_*``, what they are reported against)."""
    data, task, gallery = inputs.data, create_task(config.evaluation.task), inputs.embeddings
    metrics = task.evaluate(gallery.query, data.query.labels, gallery.gallery, data.gallery.labels, "paragon",
                            data.pair_ids())
    held_out = inputs.held_out
    if held_out is not None:
        metrics.update(task.evaluate(held_out.query_embeddings, held_out.query.labels, held_out.gallery_embeddings,
                                     held_out.gallery.labels, "paragon_heldout",
                                     (held_out.query.ids, held_out.gallery.ids)))
    levels = {measure: chance_level(measure, data.query.labels, data.gallery.labels) for measure in ("r1", "r5", "map")}
    chance = {measure: level for measure, level in levels.items() if level is not None}
    return Paragon(metrics, cost, latency_ms, chance)


def parent_run_tags(config: CmpnasConfig, inputs: SearchInputs, state: SearchState) -> dict[str, str]:
    gallery_model = inputs.gallery_model
    tags = {GALLERY_FINGERPRINT_TAG: gallery_model.fingerprint, VERSION_TAG: cmpnas_version(),
            FLOPS_CONVENTION_TAG: FLOPS_CONVENTION, DATASET_TAG: inputs.data.name,
            GALLERY_BACKBONE_TAG: gallery_model.description, GALLERY_SOURCE_TAG: gallery_model.source,
            TRAINING_MODE_TAG: config.training.mode, SEARCH_ID_TAG: state.search_id}
    if state.supernet_fingerprint is not None:
        tags[SUPERNET_FINGERPRINT_TAG] = state.supernet_fingerprint
    return tags


def attach_parent_run(tracker: SearchTracker, state: SearchState, config: CmpnasConfig, tags: dict[str, str],
                      output_dir: Path) -> SearchState:
    """The state with its parent run found or created (see the module's rules), and running."""
    if state.parent_run_id is None:
        existing = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`{SEARCH_ID_TAG}` = '{state.search_id}'", max_results=1)
        run_name = config.tracking.run_name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        state.parent_run_id = existing[0].info.run_id if existing else tracker.start_parent(run_name, tags=tags)
    derived = tune_experiment_path(config.ray.storage_path or str(output_dir / "ray_results"), state.parent_run_id)
    check_recorded_tune_path(state, derived)
    state.experiment_id = tracker.experiment_id
    state.tune_experiment_path = derived
    if state.phase == SearchPhase.STARTING:
        state = state.moved_to(SearchPhase.RUNNING)
    return state


def record_parent_run(ctx: SearchContext) -> None:
    """What the parent run holds (see the module's rules); keyed, so a resume does not log it twice."""
    config, inputs, journal = ctx.config, ctx.inputs, ctx.journal
    gallery_spec = inputs.gallery_model.input_spec
    recorded_config = redact_tree(config.recorded_tree())  # credentials never leave the process
    journal.log_params(PARENT, {
        **config_params(recorded_config), "paragon_flops_skipped_ops": ctx.paragon.cost.skipped_ops,
        "paragon_flops_convention": ctx.paragon.cost.convention,
        # The query models' preprocessing (the data's statistics) and the gallery model's, apart.
        "preprocess_mean": list(inputs.data.mean), "preprocess_std": list(inputs.data.std),
        "gallery_input_size": gallery_spec.size, "gallery_input_channels": gallery_spec.channels,
        "gallery_input_mean": list(gallery_spec.mean), "gallery_input_std": list(gallery_spec.std),
        "gallery_embed_dim": inputs.gallery_model.embed_dim,
        "gallery_classifier_kind": inputs.embeddings.classifier_kind, **data_summary(inputs),
    }, key="parent/params")
    # The splits as MLflow dataset inputs, described, never copied (docs/mlflow.md).
    journal.log_inputs(PARENT, data_split_inputs(inputs.data, config.data.source, config.data.root,
                                                 inputs.held_out_data), key="parent/datasets")
    _record_files(ctx, recorded_config)
    cost = ctx.paragon.cost
    journal.log_metrics(PARENT, {
        **ctx.paragon.metrics, "paragon_flops": cost.flops, "paragon_mflops": cost.mflops,
        **{f"chance_{measure}": level for measure, level in ctx.paragon.chance.items()},
        **({"paragon_params": cost.params} if cost.params else {}),  # unknown where gallery.mflops gives the cost
        **({"paragon_latency_ms": ctx.paragon.latency_ms} if ctx.paragon.latency_ms is not None else {}),
        "gallery_images_embedded": inputs.images_embedded, "data_bad_files": len(inputs.data.bad_files),
        **inputs.timings,
    }, key="parent/paragon")


def _record_files(ctx: SearchContext, recorded_config: dict) -> None:
    """``config.json``, ``gallery.json`` and, when files were skipped, ``bad_files.csv`` on the parent run."""
    inputs, journal = ctx.inputs, ctx.journal
    config_file = ctx.output_dir / "config.json"
    config_file.write_text(json.dumps(recorded_config, indent=2))
    journal.log_artifact(PARENT, config_file, key="parent/config.json")
    gallery_file = ctx.output_dir / GALLERY_IDENTITY_FILE
    gallery_file.write_text(json.dumps(inputs.gallery_model.identity(), indent=2))
    journal.log_artifact(PARENT, gallery_file, key=f"parent/{GALLERY_IDENTITY_FILE}")
    if inputs.data.bad_files:
        bad_file = ctx.output_dir / BAD_FILES_FILE
        with bad_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "reason"])
            writer.writerows((item.id, item.reason) for item in inputs.data.bad_files)
        journal.log_artifact(PARENT, bad_file, key=f"parent/{BAD_FILES_FILE}")


def data_summary(inputs: SearchInputs) -> dict:
    """The data's counts as parameters: with a validation split, query/gallery are the held-out splits
    and the validation halves are named apart."""
    summary = inputs.data.summary()
    held_out = inputs.held_out_data
    if held_out is not None:
        summary.update(validation_query_images=summary["query_images"],
                       validation_gallery_images=summary["gallery_images"],
                       query_images=len(held_out.query), gallery_images=len(held_out.gallery))
    return summary
