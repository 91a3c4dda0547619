"""``SearchContext``: what one session of a search holds while its trials run and are recorded.

It is built by the driver once the gallery is embedded and the parent run is open
(``orchestrator.search.driver``) and read by the stages after it: recording the parent's params
and paragon, running the trials (``orchestrator.search.trials``), recording the front, the final
training. Everything in it is fixed for the session except ``state``, which moves through the
phases of ``orchestrator.search.phases`` and is saved at each move (``move_to``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from evaluators import ComplexityReport
from orchestrator.config import CmpnasConfig
from orchestrator.search.phases import SearchPhase
from orchestrator.search.state import SearchState
from orchestrator.setup.inputs import SearchInputs
from orchestrator.tracking.journal import TrackingJournal
from workers.trial_report import Scoring


@dataclass(frozen=True)
class Paragon:
    """The gallery model measured against itself: the accuracy and cost every candidate is compared with."""

    metrics: dict[str, float]  # the evaluation task's metrics, prefixed ``paragon_``
    cost: ComplexityReport
    latency_ms: float | None = None  # evaluators.latency's median; None: not measured (see paragon_latency_ms)
    # A random ranking's R@1, R@5 and mAP on the same split (``evaluators.chance_level``), by measure.
    chance: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchContext:
    config: CmpnasConfig
    inputs: SearchInputs
    paragon: Paragon
    journal: TrackingJournal
    state: SearchState
    output_dir: Path
    console: Console
    # The supernet's weights in the inherit modes (training.mode), None in mode scratch.
    supernet_state: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        # Built once for the whole session, judging against the gallery model and chance on this split.
        scoring = self.config.scoring
        self.scoring: Scoring = scoring.with_references(self.paragon.metrics.get(f"paragon_{scoring.measure}"),
                                                        self.paragon.chance.get(scoring.measure))

    def move_to(self, phase: SearchPhase) -> None:
        self.state = self.state.moved_to(phase)
        self.state.save(self.output_dir)

    def reload_state(self) -> None:
        """The state as saved by a stage that moved it itself (``records.record_front``)."""
        self.state = SearchState.load(self.output_dir)
