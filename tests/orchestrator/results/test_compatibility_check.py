"""The compatibility check of every trial: the child run's tag, the terminal line, the front's column and the
parent run's summary (issue 14, "Schedules that transfer"); the rule itself: tests/workers/test_trial_report.py."""

import csv
import json
from types import SimpleNamespace

from rich.console import Console

from orchestrator.results.front import ParetoReport, collect_report, compatibility_summary
from orchestrator.results.front_rendering import render_table, write_csv
from orchestrator.search.progress import RichProgressCallback
from orchestrator.search.records import FrontPlan, record_front
from orchestrator.search.state import SearchState
from orchestrator.tracking.callbacks import MlflowTrialCallback
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.journal import TrackingJournal
from orchestrator.tracking.tags import COMPATIBILITY_FAILURES_TAG, COMPATIBILITY_TAG, PARENT_RUN_TAG, TRIAL_ID_TAG
from search_space import create_space
from workers.trial_report import Scoring

SPACE = create_space("mnv3_28", embed_dim=16, in_chans=1)
CAUSES_FIELDS = ("training.epochs", "training.min_steps", "training.loss_weights", "cosine_alignment",
                 "bct_influence", "training.lr")


def final_result(cross_map: float, homo_map: float, mflops: float = 1.0, **extra) -> dict:
    return {"epoch": 3, "cross_r1": cross_map, "cross_map": cross_map, "homo_r1": homo_map, "homo_map": homo_map,
            "flops": mflops * 1e6, "mflops": mflops, **extra}


def trial(trial_id: str, spec=None, last_result=None):
    spec = spec or SPACE.smallest()
    return SimpleNamespace(trial_id=trial_id, config={"arch": spec.to_json()}, checkpoint=None,
                           last_result=last_result)


# -- the child run's tag -------------------------------------------------------------------------------
def _tags_by_trial(tracker: SearchTracker, parent: str) -> dict[str, dict[str, str]]:
    return {run.data.tags[TRIAL_ID_TAG]: run.data.tags for run in tracker.child_runs(parent)}


def test_the_child_run_is_tagged_with_its_verdict_through_the_journal(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compatibility")
    parent = tracker.start_parent("search", tags={})
    journal = TrackingJournal.open(tracker, parent, tmp_path / "journal")
    callback = MlflowTrialCallback(tracker, parent, journal, Scoring("cross_map", 0.5))
    results = {"compatible": final_result(45.0, 60.0), "incompatible": final_result(12.0, 60.0),
               "stopped": {"epoch": 1, "cross_map": 5.0, "cross_r1": 5.0}}
    for trial_id, result in results.items():
        callback.on_trial_start(0, [], trial(trial_id))
        callback.on_trial_result(0, [], trial(trial_id), result)
        callback.on_trial_result(0, [], trial(trial_id), result)  # a result replayed after a restore
    tags = _tags_by_trial(tracker, parent)
    assert tags["compatible"][COMPATIBILITY_TAG] == "passed"
    assert tags["incompatible"][COMPATIBILITY_TAG] == "failed"
    assert COMPATIBILITY_TAG not in tags["stopped"]
    journaled = [json.loads(line) for line in journal.path.read_text().splitlines()]
    compatibility_writes = [entry for entry in journaled if entry.get("entry", "").endswith("/compatibility")]
    assert sorted(entry["run"] for entry in compatibility_writes) == ["trial:compatible", "trial:incompatible"]


def test_the_tag_waits_in_the_journal_through_an_outage(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compatibility")
    parent = tracker.start_parent("search", tags={})
    journal = TrackingJournal.open(tracker, parent, tmp_path / "journal")
    callback = MlflowTrialCallback(tracker, parent, journal, Scoring("cross_map", 0.5))
    callback.on_trial_start(0, [], trial("a"))
    working_set_tag = tracker.client.set_tag

    def server_down(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    tracker.client.set_tag = server_down
    callback.on_trial_result(0, [], trial("a"), final_result(10.0, 60.0))
    assert COMPATIBILITY_TAG not in _tags_by_trial(tracker, parent)["a"]
    tracker.client.set_tag = working_set_tag
    assert journal.drain(timeout_s=10)
    assert _tags_by_trial(tracker, parent)["a"][COMPATIBILITY_TAG] == "failed"


def test_the_tag_follows_the_configured_metric_and_ratio(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compatibility")
    parent = tracker.start_parent("search", tags={})
    strict = MlflowTrialCallback(tracker, parent, scoring=Scoring("cross_tar_far_1e-2", 0.9))
    result = final_result(59.0, 60.0, **{"cross_tar_far_1e-2": 50.0, "homo_tar_far_1e-2": 60.0})
    strict.on_trial_start(0, [], trial("a"))
    strict.on_trial_result(0, [], trial("a"), result)
    assert _tags_by_trial(tracker, parent)["a"][COMPATIBILITY_TAG] == "failed"  # 50 < 0.9 x 60, though mAP passes


def test_the_callbacks_keep_the_searchs_scoring_through_tunes_pickle(tmp_path):
    import pickle

    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compatibility")
    scoring = Scoring("cross_r1", 0.8)
    callback = MlflowTrialCallback(tracker, tracker.start_parent("search", tags={}), scoring=scoring)
    progress = RichProgressCallback(Console(), 2, 3, scoring)
    restored_callback, restored_progress = pickle.loads(pickle.dumps(callback)), pickle.loads(pickle.dumps(progress))
    assert restored_callback.scoring == restored_progress.scoring == scoring


# -- the terminal --------------------------------------------------------------------------------------
def test_a_failed_check_prints_one_line_with_the_values_the_causes_and_the_settings():
    console = Console(record=True, width=2000)
    progress = RichProgressCallback(console, total_trials=2, epochs=3, scoring=Scoring("cross_map", 0.5))
    spec = SPACE.smallest()
    failing, passing = trial("t_fail", spec), trial("t_pass", SPACE.largest())
    for current, result in ((failing, final_result(12.0, 60.0)), (passing, final_result(45.0, 60.0))):
        progress.on_trial_start(0, [], current)
        progress.on_trial_result(0, [], current, {"epoch": 1, "cross_map": 1.0, "cross_r1": 1.0})
        progress.on_trial_result(0, [], current, result)
        progress.on_trial_result(0, [], current, result)  # replayed: printed once
    lines = [line for line in console.export_text().splitlines() if "compatibility check failed" in line]
    assert len(lines) == 1
    line = lines[0]
    assert "t_fail" in line and spec.arch_id in line and "t_pass" not in line
    assert "cross_map 12.00 < 0.5 x homo_map 60.00 (= 30.00)" in line
    assert all(field in line for field in CAUSES_FIELDS), line
    assert progress.rows["t_fail"]["compatibility"] == "failed"
    assert progress.rows["t_pass"]["compatibility"] == "passed"


# -- the front and the summary -------------------------------------------------------------------------
def _search_with_candidates(tmp_path, ratio_param: str | None = "0.5"):
    """A parent run with three tagged candidates and one recorded before the check (no tag)."""
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compatibility")
    parent = tracker.start_parent("search", tags={})
    tracker.log_params(parent, {"search.metric": "cross_map",
                                **({"evaluation.compatibility_ratio": ratio_param} if ratio_param else {})})
    callback = MlflowTrialCallback(tracker, parent, scoring=Scoring("cross_map", 0.5))
    # cheap_failed: the cheapest, so on the front although it failed; good_passed: the most accurate.
    candidates = {"cheap_failed": final_result(20.0, 60.0, mflops=0.5),
                  "middle_passed": final_result(40.0, 60.0, mflops=1.0),
                  "good_passed": final_result(55.0, 60.0, mflops=2.0)}
    for trial_id, result in candidates.items():
        current = trial(trial_id, last_result=result)
        callback.on_trial_start(0, [], current)
        callback.on_trial_result(0, [], current, result)
        callback.on_trial_complete(0, [], current)
    legacy = tracker.client.create_run(tracker.experiment_id, run_name="legacy",
                                       tags={PARENT_RUN_TAG: parent, TRIAL_ID_TAG: "legacy"}).info.run_id
    tracker.log_params(legacy, {"arch_id": "legacy_arch"})
    tracker.log_metrics(legacy, {"final_mflops": 3.0, "final_cross_map": 35.0, "final_homo_map": 60.0,
                                 "final_homo_r1": 60.0, "final_cross_r1": 35.0})
    tracker.end_run(legacy)
    return tracker, parent


def test_the_report_flags_each_candidate_and_keeps_the_front_unchanged(tmp_path):
    tracker, parent = _search_with_candidates(tmp_path)
    report = collect_report(tracker, parent)
    verdicts = {row.run_id: row.compatibility for row in report.candidates}
    by_trial = {run.data.tags[TRIAL_ID_TAG]: run.info.run_id for run in tracker.child_runs(parent)}
    assert verdicts == {by_trial["cheap_failed"]: "failed", by_trial["middle_passed"]: "passed",
                        by_trial["good_passed"]: "passed",
                        by_trial["legacy"]: "passed"}  # recomputed from its final metrics: 35 >= 0.5 x 60
    # The failed candidate stays on the front: the check is shown, never applied.
    assert by_trial["cheap_failed"] in {row.run_id for row in report.front}
    assert report.compatibility_counts() == {"compatibility_passed": 3, "compatibility_failed": 1,
                                             "compatibility_failed_on_front": 1}
    rows = list(csv.DictReader(write_csv(report, tmp_path / "pareto.csv").open()))
    assert {row["run_id"]: row["compatibility"] for row in rows} == verdicts
    assert {row["searched_homo_value"] for row in rows} == {"60.00"}


def test_an_untagged_run_is_judged_with_the_searchs_recorded_ratio(tmp_path):
    tracker, parent = _search_with_candidates(tmp_path, ratio_param="0.9")
    verdicts = {row.arch_id: row.compatibility for row in collect_report(tracker, parent).candidates}
    assert verdicts["legacy_arch"] == "failed"  # 35 < 0.9 x 60
    assert collect_report(tracker, parent, Scoring(compatibility_ratio=0.5)).scoring.compatibility_ratio == 0.5


def test_the_table_shows_the_verdicts_and_says_how_many_failed_with_the_causes(tmp_path):
    tracker, parent = _search_with_candidates(tmp_path)
    report = collect_report(tracker, parent)
    console = Console(record=True, width=2000)
    render_table(report, console, only_front=False)
    printed = console.export_text()
    assert "compatibility" in printed and "FAILED" in printed and "passed" in printed
    summary_lines = [line for line in printed.splitlines() if "failed the compatibility check" in line]
    assert len(summary_lines) == 1
    assert "1 of 4 finished candidates" in summary_lines[0] and "1 of the" in summary_lines[0]
    assert all(field in summary_lines[0] for field in CAUSES_FIELDS)


def test_a_front_made_only_of_failed_candidates_is_called_out():
    from orchestrator.results.front import CandidateRow

    failed = CandidateRow("r1", "only_arch", 1.0, 1, 1.0, 10.0, 10.0, 60.0, 1.0, score=10.0, pareto=True,
                          homo_score=60.0, compatibility="failed")
    report = ParetoReport([failed], None, Scoring("cross_map", 0.5))
    summary = compatibility_summary(report)
    assert summary is not None and "every candidate of the Pareto front (1)" in summary and "only_arch" in summary
    assert compatibility_summary(ParetoReport([], None)) is None


def test_the_parent_run_records_how_many_candidates_failed(tmp_path):
    tracker, parent = _search_with_candidates(tmp_path)
    journal = TrackingJournal.open(tracker, parent, tmp_path / "journal")
    trial_ids = [run.data.tags[TRIAL_ID_TAG] for run in tracker.child_runs(parent)]
    state = SearchState(search_id="s", config={}, config_hash="h", tracking_uri=tracker.tracking_uri,
                        experiment="compatibility", phase="trials_done", parent_run_id=parent, trial_ids=trial_ids)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    record_front(journal, state, output_dir, FrontPlan(5, Scoring("cross_map")))
    recorded = tracker.client.get_run(parent).data
    assert recorded.metrics["compatibility_failed"] == 1
    assert recorded.metrics["compatibility_passed"] == 3
    assert recorded.metrics["compatibility_failed_on_front"] == 1
    assert recorded.tags[COMPATIBILITY_FAILURES_TAG].startswith("1 of 4 finished candidates failed")
    assert "training.loss_weights" in recorded.tags[COMPATIBILITY_FAILURES_TAG]
    assert "compatibility" in (output_dir / "pareto.csv").read_text().splitlines()[0]
