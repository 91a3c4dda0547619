"""The phases of a search, the one table of moves between them, and the format of what it records.

A search records its phase in ``search_state.json`` (``orchestrator.search.state``) at every move:

==============  ===============================================================  ===========================
phase           meaning                                                          moves to
==============  ===============================================================  ===========================
starting        the parent run is not yet known                                  running
running         trials under way (or the driver died during them)                trials_done, interrupted
interrupted     stopped with trials left                                         trials_done, interrupted
trials_done     every trial ended; the Pareto front is not yet recorded          final_training, finished
final_training  the front is recorded, its final training (search.final_training) not yet   finished
finished        everything recorded                                              (none)
==============  ===============================================================  ===========================

``TRANSITIONS`` is that table; ``SearchState.moved_to`` refuses any other move (a bug, not a user
error). Wherever a phase decides what happens, a table maps every phase to its handler: what
``cmpnas search --resume`` does (``orchestrator.search.driver``) and what ``cmpnas sync`` says
(``orchestrator.search.sync``); tests check that both cover every phase.

``STATE_FORMAT`` is the format of what a search records outside MLflow: 1 up to cmpnas 0.1
(``search_state.json`` without the field), 2 since cmpnas 0.2 moved its modules into subpackages.
Ray Tune pickles a search's callbacks and searcher into its experiment by module path, so a search
of format 1 whose Tune experiment would be restored is refused with the version that can finish
it (``LAST_VERSION_OF_FORMAT``); one whose trials had all ended needs no pickle and goes on.
"""

from __future__ import annotations

from enum import Enum

STATE_FORMAT = 2
# The last cmpnas release that wrote each earlier format: what finishes such a search.
LAST_VERSION_OF_FORMAT = {1: "0.1.0"}


class SearchPhase(str, Enum):
    """A search's phase; its value is what ``search_state.json`` holds."""

    STARTING = "starting"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    TRIALS_DONE = "trials_done"
    FINAL_TRAINING = "final_training"
    FINISHED = "finished"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


TRANSITIONS: dict[SearchPhase, frozenset[SearchPhase]] = {
    SearchPhase.STARTING: frozenset({SearchPhase.RUNNING}),
    SearchPhase.RUNNING: frozenset({SearchPhase.TRIALS_DONE, SearchPhase.INTERRUPTED}),
    SearchPhase.INTERRUPTED: frozenset({SearchPhase.TRIALS_DONE, SearchPhase.INTERRUPTED}),
    SearchPhase.TRIALS_DONE: frozenset({SearchPhase.FINAL_TRAINING, SearchPhase.FINISHED}),
    SearchPhase.FINAL_TRAINING: frozenset({SearchPhase.FINISHED}),
    SearchPhase.FINISHED: frozenset(),
}
# What `cmpnas search --resume` continues.
RESUMABLE_PHASES = frozenset(phase for phase, moves in TRANSITIONS.items() if moves)
# Phases whose trials may still be restored from Tune's pickled experiment.
TRIAL_PHASES = frozenset({SearchPhase.STARTING, SearchPhase.RUNNING, SearchPhase.INTERRUPTED})


def phase_after_front(final_training_epochs: int) -> SearchPhase:
    """Where a search goes once its front is recorded: final training when ``search.final_training.epochs``
    is set, else finished. Read from the config in a search and from the recorded config in ``cmpnas sync``."""
    return SearchPhase.FINAL_TRAINING if final_training_epochs > 0 else SearchPhase.FINISHED


def check_transition(current: SearchPhase, target: SearchPhase) -> None:
    """Refuse a move that ``TRANSITIONS`` does not list (``ValueError``: a bug in cmpnas)."""
    if target not in TRANSITIONS[current]:
        allowed = sorted(phase.value for phase in TRANSITIONS[current]) or "none"
        raise ValueError(f"a search cannot move from phase {current} to {target} (allowed: {allowed})")
