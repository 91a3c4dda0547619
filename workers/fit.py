"""The training loop shared by the gallery model and every candidate query model."""

from __future__ import annotations

import copy
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

StepLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
# Returns True to stop training after this epoch (early stopping); None or False to go on.
EpochCallback = Callable[[int, dict[str, float]], "bool | None"]
StateSink = Callable[[dict[str, Any]], None]


class BatchReader(Protocol):
    """The training set as ``fit`` reads it (``workers.training_batches``)."""

    labels: torch.Tensor  # of every example, on the training device

    def read(self, index: torch.Tensor, step: int) -> torch.Tensor:
        """The batch of examples ``index``, for optimizer step ``step`` (0-based, counted over all epochs)."""
        ...


@dataclass(frozen=True)
class OptimSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    seed: int = 0


def fit(
    trainable: nn.Module,
    batches: BatchReader,
    step_loss: StepLoss,
    settings: OptimSettings,
    on_epoch: EpochCallback | None = None,
    state_sink: StateSink | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """AdamW with linear warm-up and cosine decay per step, over batches read from ``batches``.

    The next batch is read in a background thread while the current one trains, so reading
    (from disk, with augmentation) overlaps compute.
    ``step_loss(batch, batch_labels, batch_indices)`` returns the loss and named parts
    to average over the epoch; indices let a loss look up per-image targets (e.g. cached gallery
    embeddings). After every epoch (1-based), ``state_sink`` gets the full training state (weights
    of ``trainable``, optimizer, schedule, shuffling RNG, epoch) and then ``on_epoch(epoch, stats)``
    runs with the modules in eval mode; when it returns True, training stops there (the schedule
    stays the one of ``settings.epochs``: early stopping cuts it short). Passing such a state as
    ``resume`` continues after its epoch exactly as if training had not stopped.
    """
    labels = batches.labels
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        [p for p in trainable.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(len(labels) / settings.batch_size))
    total_steps = steps_per_epoch * settings.epochs
    warmup = max(1, int(settings.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))),
    )
    first_epoch = 1
    if resume is not None:
        trainable.load_state_dict(resume["trainable"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        first_epoch = int(resume["epoch"]) + 1
    history = []
    with ThreadPoolExecutor(max_workers=1) as reader:
        for epoch in range(first_epoch, settings.epochs + 1):
            trainable.train()
            order = torch.randperm(len(labels), generator=generator)
            starts = range(0, len(labels), settings.batch_size)
            first_step = (epoch - 1) * steps_per_epoch
            sums: dict[str, float] = {}
            seen = 0
            waited = 0.0
            started = time.perf_counter()
            upcoming = reader.submit(batches.read, order[: settings.batch_size], first_step)
            for number, start in enumerate(starts):
                index = order[start : start + settings.batch_size]
                wait_started = time.perf_counter()
                batch = upcoming.result()
                waited += time.perf_counter() - wait_started
                if number + 1 < len(starts):
                    following = order[start + settings.batch_size : start + 2 * settings.batch_size]
                    upcoming = reader.submit(batches.read, following, first_step + number + 1)
                device_index = index.to(labels.device)
                loss, parts = step_loss(batch, labels[device_index], device_index)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                count = len(index)
                seen += count
                for name, value in {"loss": loss.item(), **parts}.items():
                    sums[name] = sums.get(name, 0.0) + value * count
            elapsed = time.perf_counter() - started
            stats = {name: total / seen for name, total in sums.items()}
            # What the loop consumed, and how long it sat waiting for the reader (0: reading kept up).
            stats.update(epoch_seconds=elapsed, images_per_second=seen / elapsed, loader_wait_seconds=waited)
            trainable.eval()
            history.append(stats)
            if state_sink is not None:
                # A snapshot: state_dict() tensors are the live ones, which the next epoch would change.
                state_sink(copy.deepcopy({"trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                          "epoch": epoch}))
            if on_epoch is not None and on_epoch(epoch, stats):
                break
    return history
