"""A search as MLflow's users know it (issue "MLflow as its users know it", part 4): a model-training
experiment, the data splits as dataset inputs (journaled, replayed without duplicates), the front as
the parent run's description, links that open the runs table."""

import json

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from orchestrator.results.front import MAX_DESCRIPTION_LENGTH, CandidateRow, ParagonRow, ParetoReport
from orchestrator.results.front_rendering import front_markdown
from orchestrator.search.records import FrontPlan, record_front
from orchestrator.search.state import SearchState
from orchestrator.tracking.client import SearchTracker, experiment_page_url, run_page_url
from orchestrator.tracking.dataset_inputs import data_split_inputs
from orchestrator.tracking.journal import PARENT, RetryPolicy, TrackingJournal
from orchestrator.tracking.tags import (
    DATASET_CONTEXT_TAG,
    DESCRIPTION_TAG,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    PARENT_RUN_TAG,
    TRIAL_ID_TAG,
)
from workers.datasets.types import ImageSet, RetrievalData

FAST = RetryPolicy(first_delay_s=0.01, max_delay_s=0.05)


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# -- the experiment kind --------------------------------------------------------------------------------
def test_a_new_experiment_is_a_model_training_experiment(tmp_path):
    tracker = SearchTracker(_uri(tmp_path), "fresh")
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING


def test_an_older_experiment_gets_the_kind_and_one_given_another_kind_keeps_it(tmp_path):
    client = MlflowClient(tracking_uri=_uri(tmp_path))
    older = client.create_experiment("older")
    genai = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert SearchTracker.open_existing(_uri(tmp_path), "older").experiment_id == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    SearchTracker(_uri(tmp_path), "chosen")
    assert client.get_experiment(genai).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_refused_kind_is_a_warning_not_an_error(tmp_path, monkeypatch, caplog):
    MlflowClient(tracking_uri=_uri(tmp_path)).create_experiment("read-only")

    def refused(*args, **kwargs):
        raise MlflowException("permission denied", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", refused)
    tracker = SearchTracker.open_existing(_uri(tmp_path), "read-only")
    assert tracker.experiment_id and "workflowType=machine_learning" in caplog.text


def test_links_open_the_model_training_layout():
    assert (experiment_page_url("http://127.0.0.1:5000/", "3")
            == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning")
    assert (run_page_url("http://h:5000", "3", "abc")
            == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning")


# -- the data splits as dataset inputs --------------------------------------------------------------------
def _data(labels_offset: int = 0) -> RetrievalData:
    rng = np.random.default_rng(0)

    def split(count: int, prefix: str) -> ImageSet:
        return ImageSet(rng.integers(0, 255, (count, 1, 8, 8), dtype=np.uint8),
                        (np.arange(count) + labels_offset) % 4,
                        np.array([f"{prefix}:{index}" for index in range(count)]))

    return RetrievalData("tiny", split(40, "train"), split(12, "query"), split(20, "gallery"),
                         ("a", "b", "c", "d"), (0.5,), (0.25,))


def test_each_split_is_described_by_name_digest_source_schema_and_profile_never_its_images():
    inputs = data_split_inputs(_data(), "fashion_mnist", None)
    assert [fields["context"] for fields in inputs] == ["train", "query", "gallery"]
    assert [fields["name"] for fields in inputs] == ["tiny-train", "tiny-query", "tiny-gallery"]
    assert len({fields["digest"] for fields in inputs}) == 3 and all(len(f["digest"]) == 16 for f in inputs)
    train = inputs[0]
    assert train["source_type"] == "cmpnas" and json.loads(train["source"]) == {"data_source": "fashion_mnist"}
    profile = json.loads(train["profile"])
    assert profile["num_images"] == 40 and profile["num_classes"] == 4 and profile["image_size"] == 8
    assert profile["channels"] == 1 and profile["mean"] == [0.5] and profile["bad_files"] == 0
    features = json.loads(json.loads(train["schema"])["mlflow_tensorspec"]["features"])
    assert features[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 1, 8, 8]}
    assert len(json.dumps(inputs)) < 4000  # a description: 40 x 64 pixels would not fit
    # Another labelling (or subset, or order) is another digest; the same data the same one.
    assert data_split_inputs(_data(labels_offset=1), "fashion_mnist", None)[0]["digest"] != train["digest"]
    assert data_split_inputs(_data(), "fashion_mnist", None) == inputs


def test_a_data_folder_is_a_local_source(tmp_path):
    (train, *_) = data_split_inputs(_data(), "image_folder", str(tmp_path))
    assert train["source_type"] == "local"
    assert json.loads(train["source"]) == {"uri": str(tmp_path.resolve()), "data_source": "image_folder"}


def _search(tmp_path):
    tracker = SearchTracker(_uri(tmp_path), "datasets")
    parent = tracker.start_parent("search", tags={})
    return tracker, parent, TrackingJournal(tracker, parent, tmp_path / "journal", FAST)


def _inputs_of(tracker, run_id) -> list[tuple[str, str, str]]:
    recorded = tracker.client.get_run(run_id).inputs.dataset_inputs
    return sorted((item.dataset.name, item.dataset.digest, {tag.key: tag.value for tag in item.tags}[DATASET_CONTEXT_TAG])
                  for item in recorded)


def test_the_splits_are_dataset_inputs_of_the_parent_run_through_the_journal(tmp_path):
    tracker, parent, journal = _search(tmp_path)
    inputs = data_split_inputs(_data(), "fashion_mnist", None)
    assert journal.log_inputs(PARENT, inputs, key="parent/datasets")
    assert not journal.log_inputs(PARENT, inputs, key="parent/datasets")  # keyed: once per search
    recorded = tracker.client.get_run(parent).inputs.dataset_inputs
    assert _inputs_of(tracker, parent) == sorted((f["name"], f["digest"], f["context"]) for f in inputs)
    train = next(item.dataset for item in recorded if item.dataset.name == "tiny-train")
    assert json.loads(train.profile)["num_images"] == 40 and train.source_type == "cmpnas"
    assert '"op": "log_inputs"' in journal.path.read_text()


def test_logging_the_same_inputs_again_adds_nothing_so_a_replay_is_harmless(tmp_path):
    tracker, parent, journal = _search(tmp_path)
    inputs = data_split_inputs(_data(), "fashion_mnist", None)
    tracker.log_inputs(parent, inputs)
    tracker.log_inputs(parent, inputs)  # MLflow 3.17 keeps one input per (name, digest) and run
    assert len(tracker.client.get_run(parent).inputs.dataset_inputs) == 3
    # A crash after MLflow accepted the write but before "done" reached the journal: it is sent again.
    journal.log_inputs(PARENT, inputs, key="parent/datasets")
    lines = journal.path.read_text().splitlines()
    journal.path.write_text("\n".join(line for line in lines if '"done"' not in line) + "\n")
    reopened = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert reopened.pending == 1 and reopened.drain(5)
    assert len(tracker.client.get_run(parent).inputs.dataset_inputs) == 3


def test_dataset_inputs_wait_in_the_journal_through_an_outage(tmp_path, monkeypatch):
    tracker, parent, journal = _search(tmp_path)
    sent = tracker.client.log_inputs

    def refused(*args, **kwargs):
        raise MlflowException("API request failed: Connection refused", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(tracker.client, "log_inputs", refused)
    journal.log_inputs(PARENT, data_split_inputs(_data(), "fashion_mnist", None), key="parent/datasets")
    assert journal.pending == 1 and not journal.drain(0.1)
    monkeypatch.setattr(tracker.client, "log_inputs", sent)
    assert journal.drain(5)
    assert len(tracker.client.get_run(parent).inputs.dataset_inputs) == 3


def test_a_tracking_server_keeps_one_input_per_dataset_too(mlflow_server):
    url, _ = mlflow_server
    tracker = SearchTracker(url, "served")
    parent = tracker.start_parent("search", tags={})
    inputs = data_split_inputs(_data(), "fashion_mnist", None)
    tracker.log_inputs(parent, inputs)
    tracker.log_inputs(parent, inputs)
    assert len(tracker.client.get_run(parent).inputs.dataset_inputs) == 3
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING


# -- the front as the parent run's description ------------------------------------------------------------
def _row(arch_id: str, mflops: float, cross: float, pareto: bool = True, compatibility: str = "passed") -> CandidateRow:
    return CandidateRow(f"run-{arch_id}", arch_id, mflops, 1000, 4.0, cross, cross, 60.0, 1.5, score=cross,
                        pareto=pareto, homo_score=60.0, compatibility=compatibility)


def test_the_description_is_the_front_table_in_markdown():
    report = ParetoReport([_row("cheap", 0.5, 20.0, compatibility="failed"), _row("good", 2.0, 55.0),
                           _row("dominated", 3.0, 40.0, pareto=False)],
                          ParagonRow(10.0, 5000, 62.0, 61.0, 61.0))
    text = front_markdown(report)
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| arch | MFLOPs |") and table[1].startswith("|:---|---:")
    assert table[2].startswith("| **paragon** | 10.00 | 5,000 |")
    assert [line.split(" | ")[0] for line in table[3:]] == ["| cheap", "| good"]  # the front, by FLOPs
    assert "**FAILED**" in table[3] and "passed" in table[4]
    assert lines[0].startswith("**Pareto front** (max cross_map, min FLOPs): 2 of 3 finished candidates")
    assert "**Compatibility check:** 1 of 3" in text
    assert "interrupted" not in text and "interrupted" in front_markdown(report, complete=False)


def test_a_long_front_keeps_to_mlflows_tag_length_and_counts_what_is_left_out():
    rows = [_row(f"arch_{index:04d}_" + "x" * 40, 0.1 + index, 10.0 + index * 0.01) for index in range(400)]
    text = front_markdown(ParetoReport(rows, None))
    assert len(text) <= MAX_DESCRIPTION_LENGTH
    assert "more rows in `pareto.csv`" in text
    assert text.rstrip().endswith("(evaluation.compatibility_ratio, paragon_ratio, chance_margin).")


def test_record_front_writes_the_front_as_the_parent_runs_description(tmp_path):
    tracker = SearchTracker(_uri(tmp_path), "front")
    parent = tracker.start_parent("search", tags={})
    tracker.log_params(parent, {"search.metric": "cross_map"})
    for trial_id, (mflops, cross) in {"t1": (0.5, 30.0), "t2": (1.0, 50.0)}.items():
        run = tracker.client.create_run(tracker.experiment_id, run_name=trial_id,
                                        tags={PARENT_RUN_TAG: parent, TRIAL_ID_TAG: trial_id}).info.run_id
        tracker.log_params(run, {"arch_id": f"arch_{trial_id}"})
        tracker.log_metrics(run, {"final_mflops": mflops, "final_cross_map": cross, "final_cross_r1": cross,
                                  "final_homo_map": 55.0, "final_homo_r1": 55.0})
        tracker.end_run(run)
    journal = TrackingJournal.open(tracker, parent, tmp_path / "journal")
    state = SearchState(search_id="s", config={}, config_hash="h", tracking_uri=tracker.tracking_uri,
                        experiment="front", phase="trials_done", parent_run_id=parent, trial_ids=["t1", "t2"])
    (tmp_path / "out").mkdir()
    record_front(journal, state, tmp_path / "out", FrontPlan(5))
    description = tracker.client.get_run(parent).data.tags[DESCRIPTION_TAG]
    assert description.startswith("**Pareto front** (max cross_map, min FLOPs): 2 of 2 finished candidates")
    assert "| arch_t1 | 0.50 |" in description and "| arch_t2 | 1.00 |" in description


# -- a real search ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_finished_search_has_its_splits_its_front_and_a_training_experiment(finished_search):
    config, outcome, tracker, _ = finished_search
    parent = tracker.client.get_run(outcome.parent_run_id)
    contexts = {item.dataset.name: {tag.key: tag.value for tag in item.tags}[DATASET_CONTEXT_TAG]
                for item in parent.inputs.dataset_inputs}
    assert contexts == {"fashion_mnist-train": "train", "fashion_mnist-query": "query",
                        "fashion_mnist-gallery": "gallery"}
    sizes = {item.dataset.name: json.loads(item.dataset.profile)["num_images"] for item in parent.inputs.dataset_inputs}
    assert sizes["fashion_mnist-query"] == config.data.query_size
    description = parent.data.tags[DESCRIPTION_TAG]
    assert all(f"| {row.arch_id} |" in description for row in outcome.report.front)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
