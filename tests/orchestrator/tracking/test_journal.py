"""The tracking journal on a real MLflow store: outage, replay, crash between send and record."""

import errno
import json
import logging
import os

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE, UNAUTHENTICATED

from orchestrator.config import ConfigError, validate_config
from orchestrator.tracking.errors import JournalWriteError
from orchestrator.search.state import CHANGEABLE_ON_RESUME, check_resume_config
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.journal import (
    PARENT,
    RetryPolicy,
    TrackingJournal,
    is_credential_error,
    is_transient,
    trial_ref,
)
from orchestrator.tracking.tags import PARENT_RUN_TAG, TRIAL_ID_TAG
from tests.conftest import tiny_tree

FAST = RetryPolicy(first_delay_s=0.01, max_delay_s=0.05)


def _journal(tmp_path, parent=None):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "journal")
    parent = parent or tracker.start_parent("search", tags={})
    return TrackingJournal(tracker, parent, tmp_path / "journal", FAST), tracker, parent


def _record_trial(journal, trial_id="t1", epochs=2):
    ref = trial_ref(trial_id)
    journal.create_run(ref, f"arch-{trial_id}", {PARENT_RUN_TAG: journal.parent_run_id, TRIAL_ID_TAG: trial_id},
                       key=f"{ref}/run")
    for epoch in range(1, epochs + 1):
        journal.log_metrics(ref, {"cross_r1": 10.0 * epoch}, step=epoch, key=f"{ref}/epoch/{epoch}")
    journal.log_params(ref, {"arch_id": f"arch-{trial_id}"}, key=f"{ref}/arch")
    journal.set_status(ref, "FINISHED")


class _Outage:
    """Makes the store unreachable the way a stopped server does (a refused connection)."""

    def __init__(self, client):
        self.client, self.saved = client, {}

    def __enter__(self):
        def refused(*args, **kwargs):
            raise MlflowException("API request failed: Connection refused", error_code=TEMPORARILY_UNAVAILABLE)

        for name in ("create_run", "log_batch", "set_tag", "set_terminated", "update_run", "search_runs",
                     "log_artifact"):
            self.saved[name] = getattr(self.client, name)
            setattr(self.client, name, refused)
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(self.client, name, method)


def test_writes_during_an_outage_are_kept_and_sent_once_when_the_server_is_back(tmp_path, caplog):
    journal, tracker, parent = _journal(tmp_path)
    with _Outage(tracker.client), caplog.at_level(logging.WARNING):
        _record_trial(journal)
        assert journal.pending == 5
        assert not journal.drain(0.1)
    assert "tracking server unreachable" in caplog.text
    assert tracker.child_runs(parent) == []
    assert journal.drain(5)
    reopened = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert reopened.pending == 0 and reopened.drain(1)
    (run,) = tracker.child_runs(parent)
    assert run.info.status == "FINISHED" and run.data.params["arch_id"] == "arch-t1"
    history = tracker.client.get_metric_history(run.info.run_id, "cross_r1")
    assert [(point.step, point.value) for point in history] == [(1, 10.0), (2, 20.0)]


def test_replay_after_a_crash_between_send_and_done_duplicates_nothing(tmp_path):
    journal, tracker, parent = _journal(tmp_path)
    _record_trial(journal)
    assert journal.pending == 0
    # The driver died after MLflow accepted the writes but before their "done" lines were written.
    lines = journal.path.read_text().splitlines()
    journal.path.write_text("\n".join(line for line in lines if '"done"' not in line) + "\n")
    replayed = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert replayed.pending == 5
    assert replayed.drain(5)
    (run,) = tracker.child_runs(parent)
    history = tracker.client.get_metric_history(run.info.run_id, "cross_r1")
    assert sorted(point.step for point in history) == [1, 2]


def test_a_logical_record_is_written_once_per_search_across_restarts(tmp_path):
    journal, tracker, parent = _journal(tmp_path)
    _record_trial(journal)
    again = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert not again.log_metrics(trial_ref("t1"), {"cross_r1": 99.0}, step=2, key=f"{trial_ref('t1')}/epoch/2")
    assert not again.create_run(trial_ref("t1"), "dup", {}, key=f"{trial_ref('t1')}/run")
    (run,) = tracker.child_runs(parent)
    assert [point.value for point in tracker.client.get_metric_history(run.info.run_id, "cross_r1")] == [10.0, 20.0]


def test_a_refused_write_is_recorded_and_does_not_block_the_rest(tmp_path, caplog):
    journal, tracker, parent = _journal(tmp_path)
    journal.log_params(PARENT, {"lr": 0.1})
    with caplog.at_level(logging.ERROR):
        journal.log_params(PARENT, {"lr": 0.2})  # MLflow params are immutable: refused for good
    journal.log_metrics(PARENT, {"after": 1.0})
    assert journal.pending == 0
    records = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert sum("rejected" in record for record in records) == 1
    assert tracker.client.get_run(parent).data.metrics["after"] == 1.0
    assert "cannot be sent: MlflowException" in caplog.text


def test_a_refused_write_is_logged_and_recorded_without_credentials(tmp_path, caplog):
    secret = "J0urnalSecret-41"
    journal, _, _ = _journal(tmp_path)
    journal.log_params(PARENT, {"store": f"https://me:{secret}@store.example/a"})
    with caplog.at_level(logging.ERROR):  # refused for good; MLflow's message quotes both values
        journal.log_params(PARENT, {"store": f"https://me:{secret}@store.example/b"})
    rejected = [json.loads(line) for line in journal.path.read_text().splitlines() if '"rejected"' in line]
    assert len(rejected) == 1 and "store.example" in rejected[0]["error"] and secret not in rejected[0]["error"]
    assert "cannot be sent" in caplog.text and secret not in caplog.text


def test_a_half_written_last_line_is_skipped(tmp_path):
    journal, tracker, parent = _journal(tmp_path)
    journal.log_metrics(PARENT, {"a": 1.0})
    with journal.path.open("a") as handle:
        handle.write('{"entry": "cut-sh')
    assert TrackingJournal(tracker, parent, tmp_path / "journal", FAST).pending == 0


def test_a_line_that_is_json_but_no_record_or_not_utf8_is_skipped_and_the_others_kept(tmp_path, caplog):
    from orchestrator.tracking.journal import read_journal

    journal, tracker, parent = _journal(tmp_path)
    journal.path.parent.mkdir(parents=True, exist_ok=True)
    with journal.path.open("ab") as handle:
        handle.write(b'[1, 2]\n"text"\n3\n{"entry": "x\xff"}\n')
        handle.write(json.dumps({"entry": "kept", "op": "set_tags", "ref": "parent", "data": {}}).encode() + b"\n")
    entries, pending = read_journal(journal.path)
    assert pending == ["kept"] and "kept" in entries
    assert "line 1 is JSON but not a journal record (list)" in caplog.text
    assert "line 3 is JSON but not a journal record (int)" in caplog.text
    assert "line 4 is not UTF-8 and was skipped" in caplog.text


def test_two_searches_creating_one_experiment_at_once_share_it(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    looked_up = MlflowClient.get_experiment_by_name

    def another_search_creates_it_meanwhile(self, name):
        found = looked_up(self, name)
        if found is None:  # the other search creates it between this lookup and our create_experiment
            monkeypatch.setattr(MlflowClient, "get_experiment_by_name", looked_up)
            MlflowClient(tracking_uri=uri).create_experiment(name)
        return found

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", another_search_creates_it_meanwhile)
    tracker = SearchTracker(uri, "raced")
    assert tracker.experiment_id == MlflowClient(tracking_uri=uri).get_experiment_by_name("raced").experiment_id


def test_an_append_after_a_torn_last_line_survives_a_reopen(tmp_path):
    journal, tracker, parent = _journal(tmp_path)
    journal.log_metrics(PARENT, {"a": 1.0})
    with journal.path.open("a") as handle:
        handle.write('{"entry": "cut-sh')  # the driver was killed in the middle of this write
    TrackingJournal._open.clear()
    resumed = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert journal.path.read_text().endswith("}\n")  # the torn line is gone on open
    with _Outage(tracker.client):
        resumed.log_metrics(PARENT, {"b": 2.0})  # appended after the torn line, not sent yet
    lines = journal.path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole: nothing glued to the torn one
    again = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert again.pending == 1  # the write survives another restart ...
    assert again.flush(wait=True)
    assert tracker.client.get_run(parent).data.metrics["b"] == 2.0  # ... and is sent


def test_a_failed_append_is_cut_back_and_stops_with_a_clear_error(tmp_path, monkeypatch):
    """A full disk takes part of a line, then refuses the rest (ENOSPC): the half line is removed, so
    the next append after space is freed is a line of its own, and nothing is silently dropped."""
    journal, tracker, parent = _journal(tmp_path)
    journal.log_metrics(PARENT, {"a": 1.0})
    before = journal.path.read_bytes()
    real_write = os.write
    calls = []

    def disk_fills_up(descriptor, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(descriptor, bytes(data)[:20])  # a short write: 20 bytes reach the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_fills_up)
    with _Outage(tracker.client), pytest.raises(JournalWriteError, match=r"No space left.*cut back.*--resume"):
        journal.log_metrics(PARENT, {"b": 2.0})
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) == 2 and journal.path.read_bytes() == before  # no half line left behind
    with _Outage(tracker.client):
        journal.log_metrics(PARENT, {"c": 3.0})
    TrackingJournal._open.clear()
    again = TrackingJournal(tracker, parent, tmp_path / "journal", FAST)
    assert again.pending == 1 and again.flush(wait=True)
    metrics = tracker.client.get_run(parent).data.metrics
    assert metrics["c"] == 3.0 and "b" not in metrics


def test_a_staged_artifact_is_on_disk_before_its_entry(tmp_path, synced_paths):
    journal, tracker, parent = _journal(tmp_path)
    source = tmp_path / "report.csv"
    source.write_text("a,b\n")
    synced = synced_paths
    with _Outage(tracker.client):
        journal.log_artifact(PARENT, source, key="parent/report")
    staged = next((tmp_path / "journal" / "artifacts").rglob("report.csv")).resolve()
    entry = synced.index(journal.path.resolve())
    assert {staged, staged.parent, staged.parent.parent} <= set(synced[:entry]), synced


def test_a_missing_staged_artifact_is_rejected_alone_and_is_no_outage(tmp_path, caplog):
    journal, tracker, parent = _journal(tmp_path)
    source = tmp_path / "report.csv"
    source.write_text("a,b\n")
    with _Outage(tracker.client):
        journal.log_artifact(PARENT, source, key="parent/report")
        journal.log_metrics(PARENT, {"after": 1.0})
    staged = next((tmp_path / "journal" / "artifacts").rglob("report.csv"))
    staged.unlink()  # e.g. removed by hand, or by another process that had sent it
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert journal.flush(wait=True)  # not "unreachable": the rest is sent
    assert journal.pending == 0
    assert tracker.client.get_run(parent).data.metrics["after"] == 1.0
    records = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [record["rejected"] for record in records if "rejected" in record] == ["parent/report"]
    assert "cannot be sent: FileNotFoundError" in caplog.text and "unreachable" not in caplog.text


def test_outage_errors_are_retried_and_bad_requests_are_not():
    import requests

    assert is_transient(MlflowException("down", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert not is_transient(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(FileNotFoundError("staged artifact"))
    assert not is_transient(PermissionError("unreadable"))
    refused = MlflowException("401 Unauthorized", error_code=UNAUTHENTICATED)
    assert is_transient(refused) and is_credential_error(refused)  # kept for later, but said as what it is
    wrapped = RuntimeError("upload failed")
    wrapped.__cause__ = TimeoutError()
    assert is_transient(wrapped)


def test_resume_refuses_a_changed_search_and_names_the_field(tmp_path):
    recorded = validate_config(tiny_tree(tmp_path)).model_dump(mode="json")
    moved = validate_config(tiny_tree(tmp_path, tracking={"uri": "http://tracking:5000"},
                                      ray={"num_cpus": 1})).model_dump(mode="json")
    assert check_resume_config(recorded, moved) == ["ray.num_cpus", "tracking.uri"]
    assert {"ray.num_cpus", "tracking.uri"} <= CHANGEABLE_ON_RESUME
    changed = validate_config(tiny_tree(tmp_path, search={"num_candidates": 9},
                                        training={"loss_weights": {"own_classifier": 2.0}})).model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"search.num_candidates was 3, now 9.*training.loss_weights.own_classifier"):
        check_resume_config(recorded, changed)


def _finished_search_journal(tmp_path, outage=False):
    """A search that wrote its keyed summary through the journal of ``tmp_path/out``."""
    from orchestrator.search.state import open_search_state
    from orchestrator.tracking.session import open_journal

    config = validate_config(tiny_tree(tmp_path))
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    tracker = SearchTracker(config.tracking.uri, config.tracking.experiment)
    state = open_search_state(config, output_dir, config.tracking.uri, resume=False)
    state.parent_run_id = tracker.start_parent("first", tags={})
    state.phase = "finished"
    state.save(output_dir)
    journal = open_journal(tracker, state.parent_run_id, output_dir)
    journal.policy = FAST
    if outage:
        with _Outage(tracker.client):
            journal.log_metrics(PARENT, {"search_wall_seconds": 1.0}, key="parent/wall/1")
    else:
        journal.log_metrics(PARENT, {"search_wall_seconds": 1.0}, key="parent/wall/1")
    return config, output_dir, tracker, state


def test_a_new_search_in_the_same_output_dir_records_its_own_keyed_writes(tmp_path):
    from orchestrator.search.state import open_search_state
    from orchestrator.tracking.session import open_journal

    config, output_dir, tracker, first = _finished_search_journal(tmp_path)
    second = open_search_state(config, output_dir, config.tracking.uri, resume=False)
    second.parent_run_id = tracker.start_parent("second", tags={})
    journal = open_journal(tracker, second.parent_run_id, output_dir)
    assert journal.log_metrics(PARENT, {"search_wall_seconds": 2.0}, key="parent/wall/1")
    assert tracker.client.get_run(second.parent_run_id).data.metrics["search_wall_seconds"] == 2.0
    assert tracker.client.get_run(first.parent_run_id).data.metrics["search_wall_seconds"] == 1.0


def test_a_new_search_will_not_drop_an_earlier_searchs_unsent_writes(tmp_path):
    from orchestrator.search.state import ResumeError, open_search_state
    from orchestrator.tracking.journal import JOURNAL_FILE, JOURNAL_FOLDER

    config, output_dir, _, first = _finished_search_journal(tmp_path, outage=True)
    journal_file = output_dir / JOURNAL_FOLDER / JOURNAL_FILE
    before = journal_file.read_text()
    with pytest.raises(ResumeError, match=r"1 tracking writes .*`cmpnas sync --output-dir"):
        open_search_state(config, output_dir, config.tracking.uri, resume=False)
    assert journal_file.read_text() == before


def test_writes_left_after_the_front_are_reported_with_the_sync_command(tmp_path):
    from rich.console import Console

    from orchestrator.search.records import report_unsent_writes

    journal, tracker, parent = _journal(tmp_path)
    console = Console(record=True, width=300)
    assert not report_unsent_writes(journal, tmp_path / "out", console)
    with _Outage(tracker.client):
        journal.log_metrics(PARENT, {"search_wall_seconds": 1.0}, key="parent/wall/1")
        assert report_unsent_writes(journal, tmp_path / "out", console)
    text = console.export_text()
    assert "1 tracking writes wait" in text and f"cmpnas sync --output-dir {tmp_path / 'out'}" in text
    assert journal.drain(5), "the write is kept, not dropped"


def test_a_budget_sweep_recorded_again_after_a_resume_is_written_once(tmp_path):
    from orchestrator.results.budget import BudgetPick, record_budget_sweep
    from orchestrator.results.front import CandidateRow
    from orchestrator.tracking.tags import BUDGET_TAG

    journal, tracker, parent = _journal(tmp_path)
    child = tracker.client.create_run(tracker.experiment_id, tags={PARENT_RUN_TAG: parent}).info.run_id
    best = CandidateRow(child, "arch", 1.5, 1, 1.0, 70.0, 70.0, 70.0, 1.0, score=70.0)
    picks = [BudgetPick(2.0, "budget-2000kflops", best), BudgetPick(0.5, "budget-500kflops", None)]
    for _ in range(2):  # the first session, then a resumed one that records the sweep again
        record_budget_sweep(journal, picks, tmp_path)
    assert journal.drain(5)
    assert len(tracker.client.get_metric_history(parent, "budgets_filled")) == 1
    parent_run = tracker.client.get_run(parent)
    assert parent_run.data.tags["budget-2000kflops"] == child and parent_run.data.tags["budget-500kflops"] == "none"
    assert tracker.client.get_run(child).data.tags[BUDGET_TAG] == "budget-2000kflops"
    assert [item.path for item in tracker.client.list_artifacts(parent)] == ["budget_sweep.csv"]
