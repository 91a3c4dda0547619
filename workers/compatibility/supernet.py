"""Train a weight-sharing supernet against the frozen gallery (sandwich rule, in-place distillation).

Every step samples the largest, the smallest and ``num_random_subnets`` uniform subnets of the
space (the sandwich rule), runs each on the batch at its own input resolution, and sums their
compatibility losses (the same losses as candidate fine-tuning, built by the same
``CompatibilityTraining``, against the same cached gallery embeddings and frozen gallery
classifier). With distillation on, every subnet but the largest is also pulled towards the
largest one's embedding of the same image (in-place distillation: the teacher is the supernet
itself, detached). One backward pass per step, so all sampled subnets update the shared weights
together.

Stats name the largest and the smallest subnet's parts separately (``largest_loss_*``,
``smallest_loss_*``) so the curves show both ends of the space. The subnets sampled at each step
follow from the seed and the step number, so a resumed run samples the same subnets as an
uninterrupted one. Each batch is read once and preprocessed at each sampled subnet's resolution,
exactly as a candidate of that resolution sees it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search_space.supernet import ElasticSupernet, sandwich_specs
from workers.compatibility.training import CompatibilityTraining, CompatibilityTrainingSettings, TrainingRun


@dataclass(frozen=True)
class SupernetTrainingSettings:
    """A compatibility training of the supernet: the shared settings, plus the sandwich's random subnets
    and the weight of in-place distillation (0: off)."""

    compatibility: CompatibilityTrainingSettings
    num_random_subnets: int = 2
    distillation_weight: float = 1.0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity to the largest subnet's (detached) embedding of the same image."""
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def train_supernet(supernet: ElasticSupernet, settings: SupernetTrainingSettings,
                   run: TrainingRun) -> list[dict[str, float]]:
    """Train ``supernet`` in place (see the module docstring); per-epoch stats average every sampled
    subnet's summed losses."""
    training = CompatibilityTraining(settings.compatibility, run)
    optim = settings.compatibility.optim
    steps_per_epoch = max(1, math.ceil(len(run.data.train) / optim.batch_size))
    resume = run.hooks.resume
    step = _SandwichStep(supernet, settings, training, steps_per_epoch * int(resume["epoch"]) if resume else 0)
    return training.fit(supernet, "supernet", step)


class _SandwichStep:
    """One step of supernet training: the sandwich of subnets on one batch (the module's rules)."""

    def __init__(self, supernet: ElasticSupernet, settings: SupernetTrainingSettings,
                 training: CompatibilityTraining, first_step: int):
        self.supernet, self.settings, self.training = supernet, settings, training
        self.step_number = first_step

    def __call__(self, batch: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor):
        settings, training = self.settings, self.training
        rng = random.Random(f"{settings.compatibility.optim.seed}:{self.step_number}")
        self.step_number += 1
        total = torch.zeros((), device=training.run.device)
        parts: dict[str, float] = {}
        teacher = None
        view_embeddings = training.targets.view_embeddings(batch)
        inputs: dict[int, torch.Tensor] = {}
        with training.autocast():
            for position, spec in enumerate(sandwich_specs(self.supernet.space, rng, settings.num_random_subnets)):
                if spec.resolution not in inputs:
                    inputs[spec.resolution] = training.model_input(spec.resolution)(batch)
                embeddings = self.supernet(inputs[spec.resolution], spec)
                loss, loss_parts = training.losses(training.context(embeddings, batch_labels, index, view_embeddings))
                if position == 0:
                    teacher = embeddings.detach()
                elif settings.distillation_weight > 0:
                    distill = distillation_loss(embeddings, teacher)
                    loss = loss + settings.distillation_weight * distill
                    parts["loss_distillation"] = parts.get("loss_distillation", 0.0) + distill.item()
                if position < 2:
                    end = "largest" if position == 0 else "smallest"
                    parts.update({f"{end}_{name}": value for name, value in loss_parts.items()})
                total = total + loss.float()
        if "loss_distillation" in parts:
            parts["loss_distillation"] /= max(1, settings.num_random_subnets + 1)
        return total, parts
