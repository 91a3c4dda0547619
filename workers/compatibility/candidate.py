"""Fine-tune one candidate query model against the frozen gallery with compatibility losses."""

from __future__ import annotations

import torch
from torch import nn

from workers.compatibility.training import CompatibilityTraining, CompatibilityTrainingSettings, TrainingRun


def fine_tune_candidate(model: nn.Module, resolution: int, settings: CompatibilityTrainingSettings,
                        run: TrainingRun) -> list[dict[str, float]]:
    """Train ``model`` (and its own classifier) in place, one batch read and preprocessed at a time,
    at the candidate's input ``resolution``; ``run`` says what it reads and where it reports."""
    training = CompatibilityTraining(settings, run)
    model_input = training.model_input(resolution)

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor):
        inputs = model_input(batch)
        view_embeddings = training.targets.view_embeddings(batch)
        with training.autocast():
            return training.losses(training.context(model(inputs), batch_labels, index, view_embeddings))

    return training.fit(model, "model", step)
