"""A search with a validation split (data.validation_size) and final training (search.final_training):
the gallery model early-stopped on the validation split, candidates ranked on it, everything reported
again on the held-out query/gallery splits, and the front trained again, longer, as child runs."""

import csv
import math

import pytest
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.export import ExportRequest, export_candidates, verify_compatibility
from orchestrator.results.final_training import collect_final_training, final_training_runs
from orchestrator.search.driver import run_search
from orchestrator.search.phases import SearchPhase
from orchestrator.search.state import SearchState
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import (
    DATASET_CONTEXT_TAG,
    ROLE_CANDIDATE,
    ROLE_FINAL_TRAINING,
    ROLE_TAG,
    SOURCE_RUN_TAG,
    SUPERSEDED_TAG,
)
from tests.conftest import tiny_tree
from workers.gallery.model import load_gallery

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_a_search_selects_on_validation_reports_held_out_and_trains_its_front_again(tmp_path):
    tree = tiny_tree(tmp_path, data={"train_size": 900, "validation_size": 200, "query_size": 200,
                                     "gallery_size": 400},
                     gallery={"epochs": 4, "patience": 1, "batch_size": 100, "checkpoint": None},
                     training={"epochs": 1, "batch_size": 100},
                     search={"num_candidates": 2, "strategy": "random", "final_training": {"epochs": 2}},
                     resources={"measure_latency": False})
    config = validate_config(tree)
    console = Console(record=True, width=220)
    outcome = run_search(config, console)
    text = console.export_text()

    # The paragon: trained on train less validation, early-stopped on the validation curve.
    info = load_gallery(config.gallery_checkpoint_path).info
    assert info["train_images"] == 700
    curve = info["validation_curve"]
    assert 1 <= len(curve) <= 4 and all("validation_map" in point for point in curve)
    stopping = info["early_stopping"]
    assert stopping["best_score"] == max(point["validation_map"] for point in curve)
    assert stopping["epochs_trained"] == len(curve) and stopping["validation_images"] == 200

    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.data.params["validation_query_images"] == "100"
    assert parent.data.params["query_images"] == "200" and parent.data.params["gallery_images"] == "400"
    assert {"paragon_map", "paragon_heldout_map", "paragon_heldout_r1"} <= set(parent.data.metrics)
    contexts = {next(tag.value for tag in item.tags if tag.key == DATASET_CONTEXT_TAG)
                for item in parent.inputs.dataset_inputs}
    assert contexts == {"train", "validation_query", "validation_gallery", "query", "gallery"}

    children = tracker.child_runs(outcome.parent_run_id)
    candidates = [run for run in children if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    assert len(candidates) == 2 and len(outcome.report.candidates) == 2  # final trainings are not candidates
    for run in candidates:
        metrics = run.data.metrics
        assert {"final_cross_map", "final_heldout_cross_map", "final_heldout_cross_r1",
                "final_heldout_homo_r1"} <= set(metrics)
        # Epochs report the validation metric only: nothing held out is seen while ranking.
        history = tracker.client.get_metric_history(run.info.run_id, "heldout_cross_map")
        assert history == []

    rows = list(csv.DictReader((outcome.output_dir / "pareto.csv").open()))
    assert all(not math.isnan(float(row["heldout_cross_r1"])) for row in rows)
    assert "held-out R@1" in text and "Selected on the validation split" in text
    assert "held out and only reported" in text and "paragon (held out)" in text
    assert outcome.gallery_images_embedded == 700 + 200 + 600  # selection splits, then held-out query + gallery

    # Final training: one child run per front candidate, tagged with it, trained 2 epochs instead of 1.
    finals = [run for run in children if run.data.tags[ROLE_TAG] == ROLE_FINAL_TRAINING]
    front = {row.run_id for row in outcome.report.front}
    assert len(finals) == len(front) and {run.data.tags[SOURCE_RUN_TAG] for run in finals} == front
    for run in finals:
        assert run.info.status == "FINISHED" and "final_heldout_cross_r1" in run.data.metrics
        assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "cross_map")] == [1, 2]
    rows = list(csv.DictReader((outcome.output_dir / "final_training.csv").open()))
    assert {row["source_run_id"] for row in rows} == front and all(row["metric"] == "held-out R@1" for row in rows)
    assert "Final training of the front" in text
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["final_training_runs"] == len(front)
    assert SearchState.load(outcome.output_dir).phase == "finished"

    # Export checks the ONNX model on the full data, whose query/gallery are the held-out splits: against
    # the held-out R@1, and the manifest records those figures (the validation ones beside them).
    exported = export_candidates(ExportRequest(config.tracking.uri, config.tracking.experiment, "validation-test",
                                               search_run_id=outcome.parent_run_id, register=False))
    assert exported
    for model in exported:
        run = tracker.client.get_run(model.run_id)
        recorded = model.manifest["metrics"]
        assert recorded["split"] == "held_out"
        assert recorded["cross_model"]["r1"] == run.data.metrics["final_heldout_cross_r1"]
        assert recorded["validation"]["cross_model"]["r1"] == run.data.metrics["final_cross_r1"]
        assert recorded["paragon"]["r1"] == parent.data.metrics["paragon_heldout_r1"]
        assert abs(model.onnx_cross_r1 - recorded["cross_model"]["r1"]) <= 100.0 / 200 + 1e-9
    _, verified = verify_compatibility(exported[0].folder, config.gallery_checkpoint_path, config)
    assert abs(verified.recall_at_1 - exported[0].manifest["metrics"]["cross_model"]["r1"]) <= 100.0 / 200 + 1e-9
    assert exported[0].manifest["data"]["sizes"] == {"train": 700, "validation_query": 100, "validation_gallery": 100,
                                                     "query": 200, "gallery": 400}
    # A final training's run id (a prefix, as the table shows it) exports the retrained model.
    (retrained,) = export_candidates(ExportRequest(config.tracking.uri, config.tracking.experiment, "validation-test",
                                                   candidate_run_id=finals[0].info.run_id[:12], register=False,
                                                   output_dir=tmp_path / "final-export"))
    assert retrained.run_id == finals[0].info.run_id
    assert retrained.manifest["metrics"]["cross_model"]["r1"] == finals[0].data.metrics["final_heldout_cross_r1"]

    # A driver killed during final training: one final run left RUNNING, the state file at final_training.
    # The resume supersedes that run, trains its candidate again, keeps the finished ones, and finishes.
    killed = next(run for run in finals if run.data.tags[SOURCE_RUN_TAG] == outcome.report.front[0].run_id)
    tracker.client.update_run(killed.info.run_id, status="RUNNING")
    state = SearchState.load(outcome.output_dir)
    state.phase = SearchPhase.FINAL_TRAINING  # what the killed driver had recorded (no move leads back here)
    state.save(outcome.output_dir)
    resumed = run_search(config, Console(quiet=True), resume=True)
    children = tracker.child_runs(outcome.parent_run_id)
    killed = tracker.client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags[SUPERSEDED_TAG] == "true"
    finals_now = final_training_runs(tracker, outcome.parent_run_id)
    assert sorted(run.data.tags[SOURCE_RUN_TAG] for run in finals_now) == sorted(front)  # one each, again
    assert len([run for run in children if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]) == 2  # no trial re-run
    assert len(collect_final_training(tracker, outcome.parent_run_id, resumed.report)) == len(front)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["search_sessions"] == 2
    assert SearchState.load(outcome.output_dir).phase == "finished"

    # A driver killed after the trials, before the front was recorded: the resume records the front, then
    # goes on to final training, which finds every front candidate already trained again and finishes.
    state = SearchState.load(outcome.output_dir)
    state.phase = SearchPhase.TRIALS_DONE
    state.save(outcome.output_dir)
    tracker.client.update_run(outcome.parent_run_id, status="RUNNING")
    again = run_search(config, Console(quiet=True), resume=True)
    assert {row.run_id for row in again.report.front} == front
    assert sorted(run.info.run_id for run in final_training_runs(tracker, outcome.parent_run_id)) == sorted(
        run.info.run_id for run in finals_now)  # nothing trained a third time
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["search_sessions"] == 3
    assert parent.data.metrics["candidates_asked"] == 2
    assert SearchState.load(outcome.output_dir).phase == "finished"
