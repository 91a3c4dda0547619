"""Train the gallery (paragon) model on the train split with its own classifier.

Early stopping (``GalleryEarlyStopping``, ``gallery.patience``), the rules:

* after every epoch the model embeds the validation query and gallery halves
  (``workers.datasets.validation``) and is scored gallery/gallery by the evaluation task; the score
  is the searched metric (``search.metric`` without ``cross_``);
* an epoch is *better* when its score exceeds the best so far by more than ``min_delta`` points;
  training stops after ``patience`` epochs in a row without a better one, or at ``gallery.epochs``;
* the best epoch is the one the validation split preferred, not the last one;
* the kept model always comes from a schedule that ran to its end (warm-up, cosine decay to zero):
  when the best epoch is not the last of a full ``gallery.epochs`` run (training stopped early, or
  an earlier epoch scored best), the model is trained again from the same seed for exactly
  ``best_epoch`` epochs, its schedule annealed over those, and that model is kept (``retrained_epochs``
  in the record). Selecting a half-annealed snapshot would keep a model whose learning rate was still
  high, a weaker paragon than its own recipe gives.

With ``GalleryTrainingSettings.mixed_precision`` the forward pass runs under bfloat16 autocast on a GPU
or a CPU with native bfloat16 (``workers.training.precision``), the loss in float32.

Training without early stopping may be resumed: ``GalleryTrainingState.sink`` receives the full state
after every epoch (``workers.training.fit``) and ``GalleryTrainingState.resume`` continues it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from workers.datasets import RetrievalData
from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet
from workers.training.batches import AugmentationSettings, ImageBatches
from workers.training.fit import EpochCallback, EpochHooks, OptimSettings, StateSink, fit
from workers.training.precision import training_autocast
from workers.training.preprocess import ModelInput, embed_images, to_model_input


@dataclass(frozen=True)
class GalleryTrainingSettings:
    backbone: str
    embed_dim: int
    optim: OptimSettings
    stem_stride: int = 2
    logit_scale: float = 16.0
    augmentation: AugmentationSettings | None = None
    # bfloat16 autocast of the forward pass on a GPU or a CPU with native bfloat16 (workers.training.precision).
    mixed_precision: bool = False


@dataclass(frozen=True)
class GalleryTrainingState:
    """Where a long training leaves its state after each epoch (``sink``) and the state to continue
    from (``resume``: a state the sink received); only without early stopping."""

    sink: StateSink | None = None
    resume: dict | None = None


@dataclass
class GalleryEarlyStopping:
    """Scores the gallery model on the validation halves after each epoch and says when to stop
    (module rules); afterwards ``curve``, ``best_epoch`` and ``stopped_early`` describe the run."""

    validation: RetrievalData  # the selection view: its query/gallery are the validation halves
    task: str  # an evaluators task name
    metric: str  # one of the task's metrics, without prefix (e.g. "map", "tar_far_1e-2")
    patience: int
    min_delta: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    stopped_early: bool = False
    retrained_epochs: int | None = None  # set when the kept model was trained again to best_epoch

    def score(self, model: GalleryEmbeddingNet, device: torch.device) -> dict[str, float]:
        from evaluators import create_task

        data = self.validation

        def embed(split: str):
            model_input = ModelInput(data.mean, data.std, data.image_size, device)
            return embed_images(model, getattr(data, split).images, model_input)

        return create_task(self.task).evaluate(embed("query"), data.query.labels, embed("gallery"),
                                               data.gallery.labels, "validation", data.pair_ids())

    def after_epoch(self, epoch: int, stats: dict[str, float], model: GalleryEmbeddingNet,
                    device: torch.device) -> bool:
        """Called by ``train_gallery`` after each epoch, the model in eval mode; True: stop now."""
        scores = self.score(model, device)
        key = f"validation_{self.metric}"
        if key not in scores:
            raise ValueError(f"the {self.task} task has no metric {self.metric!r} (search.metric); it reports "
                             f"{sorted(name.removeprefix('validation_') for name in scores)}")
        score = scores[key]
        self.curve.append({"epoch": epoch, "loss": stats.get("loss", float("nan")), **scores})
        if score > self.best_score + self.min_delta:
            self.best_epoch, self.best_score = epoch, score
        self.stopped_early = epoch - self.best_epoch >= self.patience
        return self.stopped_early

    def needs_retraining(self, ceiling: int) -> bool:
        """Called after training: True unless the best epoch ended a schedule of ``ceiling`` epochs."""
        return self.best_epoch < ceiling or len(self.curve) < ceiling

    def record(self) -> dict:
        """What the checkpoint keeps of the run: the schedule's outcome and the curve."""
        return {"early_stopping": {"metric": self.metric, "task": self.task, "patience": self.patience,
                                   "best_epoch": self.best_epoch, "best_score": self.best_score,
                                   "epochs_trained": len(self.curve), "stopped_early": self.stopped_early,
                                   "retrained_epochs": self.retrained_epochs,
                                   "validation_images": len(self.validation.query) + len(self.validation.gallery)},
                "validation_curve": self.curve}


def train_gallery(
    data: RetrievalData,
    settings: GalleryTrainingSettings,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    early_stopping: GalleryEarlyStopping | None = None,
    state: GalleryTrainingState = GalleryTrainingState(),
) -> GalleryEmbeddingNet:
    """Train on ``data.train``; with ``early_stopping``, choose the number of epochs by its rules and
    keep a model whose schedule completed (module rules)."""
    if early_stopping is not None and state.resume is not None:
        raise ValueError("a gallery training with early stopping cannot be resumed: its curve is not in the state")
    model = _train(data, settings, device, on_epoch, early_stopping, state)
    if early_stopping is not None and early_stopping.needs_retraining(settings.optim.epochs):
        epochs = early_stopping.best_epoch
        early_stopping.retrained_epochs = epochs
        model = _train(data, replace(settings, optim=replace(settings.optim, epochs=epochs)), device, None, None,
                       GalleryTrainingState())
    return model.eval().requires_grad_(False)


def _train(data: RetrievalData, settings: GalleryTrainingSettings, device: torch.device,
           on_epoch: EpochCallback | None, early_stopping: GalleryEarlyStopping | None,
           state: GalleryTrainingState) -> GalleryEmbeddingNet:
    """One run of the schedule of ``settings.optim.epochs`` from the seed (or from ``state.resume``)."""
    torch.manual_seed(settings.optim.seed)
    arch = GalleryArchitecture(
        backbone=settings.backbone,
        embed_dim=settings.embed_dim,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        image_size=data.image_size,
        stem_stride=settings.stem_stride,
        logit_scale=settings.logit_scale,
    )
    model = GalleryEmbeddingNet(arch).to(device)
    batches = ImageBatches(data.train.images, data.train.labels, device, settings.augmentation,
                           seed=settings.optim.seed)

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, _index: torch.Tensor):
        inputs = to_model_input(batch, data.mean, data.std, data.image_size, device)
        with training_autocast(device, settings.mixed_precision, on_cpu=True):
            logits = model.classify(model(inputs))
        return F.cross_entropy(logits.float(), batch_labels), {}

    def after_epoch(epoch: int, stats: dict[str, float]) -> bool:
        stop = early_stopping is not None and early_stopping.after_epoch(epoch, stats, model, device)
        if on_epoch is not None:
            on_epoch(epoch, {**stats, **(early_stopping.curve[-1] if early_stopping is not None else {})})
        return stop

    fit(model, batches, step, settings.optim, EpochHooks(on_epoch=after_epoch, state_sink=state.sink,
                                                        resume=state.resume))
    return model
