"""The Tune callback that writes child runs: never fails a trial, never leaves a run open."""

import logging
from types import SimpleNamespace

from orchestrator.tracking.callbacks import MlflowTrialCallback
from orchestrator.tracking.client import SearchTracker
from search_space import create_space


def _trial(trial_id):
    spec = create_space("mnv3_28", embed_dim=16, in_chans=1).smallest()
    return SimpleNamespace(trial_id=trial_id, config={"arch": spec.to_json()}, checkpoint=None)


def test_open_child_runs_are_killed_when_the_experiment_ends(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "callbacks")
    parent = tracker.start_parent("search", tags={})
    callback = MlflowTrialCallback(tracker, parent)
    finished, interrupted = _trial("a"), _trial("b")
    for trial in (finished, interrupted):
        callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], interrupted, {"epoch": 1, "cross_r1": 50.0})
    callback.on_trial_complete(0, [], finished)
    callback.on_experiment_end([])
    statuses = {run.data.tags["cmpnas.trial_id"]: run.info.status for run in tracker.child_runs(parent)}
    assert statuses == {"a": "FINISHED", "b": "KILLED"}
    history = tracker.client.get_metric_history(callback.run_ids["b"], "cross_r1")
    assert [(point.step, point.value) for point in history] == [(1, 50.0)]


def test_a_tracking_failure_is_logged_and_does_not_fail_the_trial(tmp_path, caplog):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "callbacks")
    callback = MlflowTrialCallback(tracker, tracker.start_parent("search", tags={}))
    callback.on_trial_start(0, [], _trial("a"))

    def server_down(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    tracker.client.log_batch = server_down
    with caplog.at_level(logging.ERROR):
        assert callback.on_trial_result(0, [], _trial("a"), {"epoch": 1, "cross_r1": 1.0}) is None
    assert "tracking failed in on_trial_result" in caplog.text


def test_restored_callbacks_write_to_the_resuming_drivers_journal(tmp_path):
    # Tune pickles its callbacks into the experiment; a resume unpickles them in a new driver.
    import pickle

    from orchestrator.tracking.convergence import SearchConvergenceCallback
    from orchestrator.tracking.journal import TrackingJournal

    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "callbacks")
    parent = tracker.start_parent("search", tags={})
    journal = TrackingJournal.open(tracker, parent, tmp_path / "journal")
    trials = MlflowTrialCallback(tracker, parent, journal)
    trials.on_trial_start(0, [], _trial("a"))
    convergence = SearchConvergenceCallback(tracker, parent, paragon_mflops=60.0, journal=journal)
    convergence.points.append((50.0, 2.0))
    restored_trials, restored_convergence = pickle.loads(pickle.dumps(trials)), pickle.loads(pickle.dumps(convergence))
    assert restored_trials.journal is journal and restored_convergence.journal is journal
    # Trial "a" may have finished after the snapshot: the new session must not end it KILLED.
    restored_trials.on_experiment_end([])
    assert [run.info.status for run in tracker.child_runs(parent)] == ["RUNNING"]
    assert restored_convergence.points == [(50.0, 2.0)]
