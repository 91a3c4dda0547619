"""``SearchContext``: what one session of a search holds while its trials run and are recorded.

It is built by the driver once the parent run is open (``orchestrator.driver.run_search``) and
read by the stages after it: recording the parent's params and paragon, running the trials
(``orchestrator.trials``), recording the front. The only field that changes is ``state``, which
moves through the phases of ``orchestrator.search_state`` and is saved at each move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from evaluators import ComplexityReport
from orchestrator.config import CmpnasConfig
from orchestrator.journal import TrackingJournal
from orchestrator.search_inputs import SearchInputs
from orchestrator.search_state import SearchState
from workers.gallery_embeddings import GalleryEmbeddings


@dataclass(frozen=True)
class Paragon:
    """The gallery model measured against itself: the accuracy and cost every candidate is compared with."""

    metrics: dict[str, float]  # the evaluation task's metrics, prefixed ``paragon_``
    cost: ComplexityReport


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

    @property
    def embeddings(self) -> GalleryEmbeddings:
        if self.inputs.embeddings is None:
            raise RuntimeError("the gallery is embedded before a search context is built")
        return self.inputs.embeddings

    def save_state(self) -> None:
        self.state.save(self.output_dir)
