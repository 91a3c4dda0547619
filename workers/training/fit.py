"""The training loop shared by the gallery model and every candidate query model.

Rules of ``fit``:
* AdamW with linear warm-up (``warmup_fraction`` of the steps) and cosine decay per step, over
  batches read from ``batches`` in a shuffled order drawn from ``seed``;
* the next batch is read in a background thread while the current one trains, so reading (from
  disk, with augmentation) overlaps compute;
* a reader may append rows to every batch (``batch_rows(index, step)``: the unlabelled pool's,
  ``workers.training.batches.PooledBatches``); an epoch is a pass over its first ``epoch_rows`` rows
  (default: all of ``labels``), the labelled ones;
* ``step_loss(batch, batch_labels, batch_indices)`` returns the loss and named parts to average over
  the epoch; indices let a loss look up per-image targets (e.g. cached gallery embeddings); a loss
  that is not finite stops training with ``FloatingPointError``;
* after every epoch (1-based) ``EpochHooks.state_sink`` gets the full training state (weights of
  ``trainable``, optimizer, schedule, shuffling RNG, epoch), then ``EpochHooks.on_epoch(epoch,
  stats)`` runs with the modules in eval mode; when it returns True, training stops there (the
  schedule stays the one of ``epochs``: early stopping cuts it short). Passing such a state as
  ``EpochHooks.resume`` continues after its epoch exactly as if training had not stopped.
"""

from __future__ import annotations

import copy
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

StepLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
# Returns True to stop training after this epoch (early stopping); None or False to go on.
EpochCallback = Callable[[int, dict[str, float]], "bool | None"]
StateSink = Callable[[dict[str, Any]], None]


class BatchReader(Protocol):
    """The training set as ``fit`` reads it (``workers.training.batches``)."""

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


@dataclass(frozen=True)
class EpochHooks:
    """What happens between epochs: see the module's rules."""

    on_epoch: EpochCallback | None = None
    state_sink: StateSink | None = None
    resume: dict[str, Any] | None = None


class _Optimization:
    """AdamW, its warm-up/cosine schedule and the shuffling RNG of one training, restorable as a state."""

    def __init__(self, trainable: nn.Module, settings: OptimSettings, steps_per_epoch: int):
        self.optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        total = steps_per_epoch * settings.epochs
        warmup = max(1, int(settings.warmup_fraction * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / warmup if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
        self.generator = torch.Generator().manual_seed(settings.seed)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def state(self, trainable: nn.Module, epoch: int) -> dict[str, Any]:
        # A snapshot: state_dict() tensors are the live ones, which the next epoch would change.
        return copy.deepcopy({"trainable": trainable.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                              "epoch": epoch})

    def restore(self, trainable: nn.Module, state: dict[str, Any]) -> int:
        """Load ``state``; returns the epoch to continue with."""
        trainable.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        return int(state["epoch"]) + 1


def epoch_rows(batches: BatchReader) -> int:
    """The rows one epoch passes over (module rules)."""
    return int(getattr(batches, "epoch_rows", len(batches.labels)))


def fit(trainable: nn.Module, batches: BatchReader, step_loss: StepLoss, settings: OptimSettings,
        hooks: EpochHooks = EpochHooks()) -> list[dict[str, float]]:
    """Train ``trainable`` in place (see the module's rules); returns each epoch's statistics."""
    steps_per_epoch = max(1, math.ceil(epoch_rows(batches) / settings.batch_size))
    optimization = _Optimization(trainable, settings, steps_per_epoch)
    first_epoch = optimization.restore(trainable, hooks.resume) if hooks.resume is not None else 1
    history = []
    with ThreadPoolExecutor(max_workers=1) as reader:
        for epoch in range(first_epoch, settings.epochs + 1):
            trainable.train()
            order = torch.randperm(epoch_rows(batches), generator=optimization.generator)
            stats = _train_epoch(_Epoch(batches, step_loss, optimization, reader), order, settings.batch_size,
                                 (epoch - 1) * steps_per_epoch)
            trainable.eval()
            history.append(stats)
            if hooks.state_sink is not None:
                hooks.state_sink(optimization.state(trainable, epoch))
            if hooks.on_epoch is not None and hooks.on_epoch(epoch, stats):
                break
    return history


@dataclass(frozen=True)
class _Epoch:
    batches: BatchReader
    step_loss: StepLoss
    optimization: _Optimization
    reader: ThreadPoolExecutor

    def rows(self, index: torch.Tensor, step: int) -> torch.Tensor:
        """The rows of step ``step``: ``index``, and those the reader appends (module rules)."""
        batch_rows = getattr(self.batches, "batch_rows", None)
        return index if batch_rows is None else batch_rows(index, step)

    def read(self, index: torch.Tensor, step: int) -> Future:
        return self.reader.submit(self.batches.read, self.rows(index, step), step)


def _train_epoch(epoch: _Epoch, order: torch.Tensor, batch_size: int, first_step: int) -> dict[str, float]:
    """One pass over ``order``, reading the next batch while this one trains; the epoch's statistics."""
    labels = epoch.batches.labels
    starts = range(0, len(order), batch_size)
    sums: dict[str, float] = {}
    seen, waited, started = 0, 0.0, time.perf_counter()
    upcoming = epoch.read(order[:batch_size], first_step)
    for number, start in enumerate(starts):
        index = order[start : start + batch_size]
        wait_started = time.perf_counter()
        batch = upcoming.result()
        waited += time.perf_counter() - wait_started
        if number + 1 < len(starts):
            upcoming = epoch.read(order[start + batch_size : start + 2 * batch_size], first_step + number + 1)
        device_index = epoch.rows(index, first_step + number).to(labels.device)
        loss, parts = epoch.step_loss(batch, labels[device_index], device_index)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {first_step // len(starts) + 1}; lower the "
                                     "learning rate")
        epoch.optimization.step(loss)
        seen += len(index)
        for name, value in {"loss": loss.item(), **parts}.items():
            sums[name] = sums.get(name, 0.0) + value * len(index)
    elapsed = time.perf_counter() - started
    stats = {name: total / seen for name, total in sums.items()}
    # What the loop consumed, and how long it sat waiting for the reader (0: reading kept up).
    stats.update(epoch_seconds=elapsed, images_per_second=seen / elapsed, loader_wait_seconds=waited)
    return stats
