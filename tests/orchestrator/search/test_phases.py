"""A search's phases: one table of moves, a handler for every phase where a phase decides, and
`cmpnas sync` on a search in each phase (it once raised KeyError on one killed during final training)."""

from pathlib import Path

import pytest

from orchestrator.search.driver import PHASE_HANDLERS
from orchestrator.search.phases import RESUMABLE_PHASES, TRANSITIONS, SearchPhase, phase_after_front
from orchestrator.search.state import SearchState
from orchestrator.search.sync import PHASE_STEPS, sync_search
from orchestrator.tracking.client import SearchTracker


def test_every_phase_has_its_moves_a_resume_handler_and_a_sync_step():
    assert set(TRANSITIONS) == set(PHASE_HANDLERS) == set(PHASE_STEPS) == set(SearchPhase)
    assert RESUMABLE_PHASES == set(SearchPhase) - {SearchPhase.FINISHED}


@pytest.mark.parametrize(("phase", "target"), [
    (SearchPhase.STARTING, SearchPhase.RUNNING), (SearchPhase.RUNNING, SearchPhase.TRIALS_DONE),
    (SearchPhase.RUNNING, SearchPhase.INTERRUPTED), (SearchPhase.INTERRUPTED, SearchPhase.INTERRUPTED),
    (SearchPhase.TRIALS_DONE, SearchPhase.FINAL_TRAINING), (SearchPhase.FINAL_TRAINING, SearchPhase.FINISHED),
])
def test_a_move_the_table_lists_is_made_and_recorded(phase, target):
    state = SearchState.new({}, "sqlite:///x.db", "e")
    state.phase = phase
    moved = state.moved_to(target)
    assert moved.phase is target and moved.history[-1] == target.value


@pytest.mark.parametrize(("phase", "target"), [
    (SearchPhase.STARTING, SearchPhase.FINISHED), (SearchPhase.FINISHED, SearchPhase.RUNNING),
    (SearchPhase.TRIALS_DONE, SearchPhase.RUNNING), (SearchPhase.FINAL_TRAINING, SearchPhase.TRIALS_DONE),
])
def test_a_move_the_table_does_not_list_is_refused(phase, target):
    state = SearchState.new({}, "sqlite:///x.db", "e")
    state.phase = phase
    with pytest.raises(ValueError, match=f"from phase {phase} to {target}"):
        state.moved_to(target)


def test_after_the_front_a_search_goes_to_final_training_only_when_it_has_epochs():
    assert phase_after_front(3) is SearchPhase.FINAL_TRAINING
    assert phase_after_front(0) is SearchPhase.FINISHED
    assert all(phase_after_front(epochs) in TRANSITIONS[SearchPhase.TRIALS_DONE] for epochs in (0, 3))


def test_the_phase_is_recorded_by_its_value_and_read_back_as_a_phase(tmp_path):
    state = SearchState.new({}, "sqlite:///x.db", "e").moved_to(SearchPhase.RUNNING)
    state.save(tmp_path)
    assert '"phase": "running"' in SearchState.path_in(tmp_path).read_text()
    assert SearchState.load(tmp_path).phase is SearchPhase.RUNNING


def _recorded_search(tmp_path: Path, phase: SearchPhase, final_training_epochs: int = 0) -> tuple[Path, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "phases")
    state = SearchState.new({"search": {"final_training": {"epochs": final_training_epochs}}}, uri, "phases")
    state.parent_run_id = tracker.start_parent("search", tags={})
    state.phase = phase
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    state.save(output_dir)
    return output_dir, state.parent_run_id


@pytest.mark.parametrize(("phase", "says"), [
    (SearchPhase.STARTING, "killed while starting"), (SearchPhase.RUNNING, "running or was killed"),
    (SearchPhase.INTERRUPTED, "interrupted"), (SearchPhase.FINAL_TRAINING, "final training did not finish"),
    (SearchPhase.FINISHED, "had finished"),
])
def test_sync_says_what_to_do_next_in_every_phase(tmp_path, phase, says):
    output_dir, _ = _recorded_search(tmp_path, phase)
    summary = sync_search(output_dir, None, wait_s=5)
    assert says in summary and "sent 0 journaled writes" in summary
    assert SearchState.load(output_dir).phase is phase


def test_sync_of_a_search_whose_trials_ended_records_the_front_and_moves_on_as_the_search_would(tmp_path):
    output_dir, parent = _recorded_search(tmp_path, SearchPhase.TRIALS_DONE, final_training_epochs=9)
    summary = sync_search(output_dir, None, wait_s=5)
    assert "Pareto front recorded" in summary and "search --resume" in summary
    assert SearchState.load(output_dir).phase is SearchPhase.FINAL_TRAINING, "its final training is still to run"
    assert (output_dir / "pareto.csv").is_file()
    tracker = SearchTracker.open_existing(f"sqlite:///{tmp_path / 'mlflow.db'}", "phases")
    assert tracker.client.get_run(parent).info.status == "RUNNING", "FINISHED only after its final training"
